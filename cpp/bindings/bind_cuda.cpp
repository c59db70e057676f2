#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "bindings.hpp"
#include "convert.hpp"
#include "maskid/preprocess_cuda.hpp"

namespace maskid::bind {

void bind_cuda(py::module_& m) {
  m.def("cuda_device_count", &cuda::device_count, "CUDA devices visible now (0 without a GPU).");
  m.def(
      "warp_batch_cuda",
      [](const py::array& image, const py::array& transforms, int64_t size, bool bgr,
         const std::array<float, 3>& mean, float scale, const py::object& out, bool bgr_out) {
        const ImageView view = image_view(image, bgr);
        const std::vector<double> t = transforms_vec(transforms);
        const WarpParams params = warp_params(size, mean, scale, 0, bgr_out);
        validate(view, params);
        const auto n = static_cast<int64_t>(t.size() / 6);
        py::array_t<float> result = output_array(out, n, size);
        float* dst = result.mutable_data();
        {
          py::gil_scoped_release release;
          cuda::warp_batch_host(view, t.data(), n, params, dst);
        }
        return result;
      },
      py::arg("image"), py::arg("transforms"), py::arg("size") = 150, py::arg("bgr") = false,
      py::arg("mean") = std::array<float, 3>{0, 0, 0}, py::arg("scale") = 1.0f,
      py::arg("out") = py::none(), py::arg("bgr_out") = false,
      R"doc(warp_batch on the GPU: host arrays in, host array out (for tests and checks).

In the pipeline the kernel writes straight into the engine's device input buffer instead.)doc");
}

}  // namespace maskid::bind
