#pragma once
#include <string>

namespace maskid {

// What this build of the core was compiled with (reported by maskid.backends()).
struct BuildInfo {
  bool cuda;
  bool tensorrt;
  std::string compiler;
};

BuildInfo build_info();

}  // namespace maskid
