#pragma once
#include <string>

namespace maskid {

// What this build of the core was compiled with (reported by maskid.backends()).
struct BuildInfo {
  bool cuda;
  bool tensorrt;
  std::string compiler;
  std::string cuda_archs;  // e.g. "87-real,89-real,90"; empty without CUDA
};

BuildInfo build_info();

}  // namespace maskid
