// Thin pybind11 layer over the maskid C++ core: type conversion only, no logic.
#include <pybind11/pybind11.h>

#include "maskid/build_info.hpp"

namespace py = pybind11;

PYBIND11_MODULE(_core, m) {
  m.doc() = "maskid C++ core: fused face preprocessing and batched engine execution";
  m.def(
      "build_info",
      []() {
        const maskid::BuildInfo info = maskid::build_info();
        py::dict d;
        d["cuda"] = info.cuda;
        d["tensorrt"] = info.tensorrt;
        d["compiler"] = info.compiler;
        return d;
      },
      "What this build of the core was compiled with.");
}
