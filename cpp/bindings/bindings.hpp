#pragma once
#include <pybind11/pybind11.h>

namespace maskid::bind {

void bind_preprocess(pybind11::module_& m);
#ifdef MASKID_WITH_CUDA
void bind_cuda(pybind11::module_& m);
#endif
#ifdef MASKID_WITH_TENSORRT
void bind_trt(pybind11::module_& m);
#endif

}  // namespace maskid::bind
