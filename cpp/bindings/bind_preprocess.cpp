#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "bindings.hpp"
#include "convert.hpp"
#include "maskid/preprocess.hpp"

namespace maskid::bind {

void bind_preprocess(py::module_& m) {
  m.def(
      "warp_batch",
      [](const py::array& image, const py::array& transforms, int64_t size, bool bgr,
         const std::array<float, 3>& mean, float scale, const py::object& out, unsigned threads,
         bool bgr_out) {
        const ImageView view = image_view(image, bgr);
        const std::vector<double> t = transforms_vec(transforms);
        const WarpParams params = warp_params(size, mean, scale, threads, bgr_out);
        validate(view, params);
        const auto n = static_cast<int64_t>(t.size() / 6);
        py::array_t<float> result = output_array(out, n, size);
        float* dst = result.mutable_data();
        {
          py::gil_scoped_release release;
          warp_batch(view, t.data(), n, params, dst);
        }
        return result;
      },
      py::arg("image"), py::arg("transforms"), py::arg("size") = 150, py::arg("bgr") = false,
      py::arg("mean") = std::array<float, 3>{0, 0, 0}, py::arg("scale") = 1.0f,
      py::arg("out") = py::none(), py::arg("threads") = 0u, py::arg("bgr_out") = false,
      R"doc(Warp N face chips out of one uint8 (H, W, 3) image into float32 (N, 3, S, S)
planes, RGB (BGR with bgr_out: the model's order).

transforms: float64 (N, 2, 3) mapping chip (col, row, 1) to image (x, y).
Sampling matches dlib's extract_image_chip; out = (v - mean[c]) * scale.)doc");
}

}  // namespace maskid::bind
