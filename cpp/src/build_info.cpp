#include "maskid/build_info.hpp"

namespace maskid {

BuildInfo build_info() {
  BuildInfo info{};
#ifdef MASKID_WITH_CUDA
  info.cuda = true;
  info.cuda_archs = MASKID_CUDA_ARCHS;
#endif
#ifdef MASKID_WITH_TENSORRT
  info.tensorrt = true;
#endif
#if defined(__clang__)
  info.compiler = "clang " __clang_version__;
#elif defined(__GNUC__)
  info.compiler = "gcc " __VERSION__;
#else
  info.compiler = "unknown";
#endif
  return info;
}

}  // namespace maskid
