// Thin pybind11 layer over the maskid C++ core: type conversion only, no logic.
#include <pybind11/pybind11.h>

#include "bindings.hpp"
#include "maskid/build_info.hpp"

namespace py = pybind11;

PYBIND11_MODULE(_core, m, py::mod_gil_not_used()) {
  m.doc() = "maskid C++ core: fused face preprocessing and batched engine execution";
  m.def(
      "build_info",
      []() {
        const maskid::BuildInfo info = maskid::build_info();
        py::dict d;
        d["cuda"] = info.cuda;
        d["tensorrt"] = info.tensorrt;
        d["compiler"] = info.compiler;
        d["cuda_archs"] = info.cuda_archs;
        return d;
      },
      "What this build of the core was compiled with.");
  maskid::bind::bind_preprocess(m);
#ifdef MASKID_WITH_CUDA
  maskid::bind::bind_cuda(m);
#endif
#ifdef MASKID_WITH_TENSORRT
  maskid::bind::bind_trt(m);
#endif
}
