#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstring>

#include "bindings.hpp"
#include "convert.hpp"
#include "maskid/device_pipeline.hpp"
#include "maskid/trt_executor.hpp"

namespace maskid::bind {

void bind_trt(py::module_& m) {
  using trt::Executor;
  py::class_<Executor>(m, "TrtExecutor", "A deserialized TensorRT engine with pinned buffers.")
      .def(py::init<const std::string&>(), py::arg("path"),
           py::call_guard<py::gil_scoped_release>())
      .def_property_readonly("input_name", [](const Executor& e) { return e.input().name; })
      .def_property_readonly("output_name", [](const Executor& e) { return e.output().name; })
      .def_property_readonly("input_shape", [](const Executor& e) { return e.input().shape; })
      .def_property_readonly("output_shape", [](const Executor& e) { return e.output().shape; })
      .def_property_readonly("min_batch", &Executor::min_batch)
      .def_property_readonly("max_batch", &Executor::max_batch)
      .def_static("tensorrt_version", &Executor::tensorrt_version)
      .def(
          "pinned_input",
          [](py::object self) {
            auto& e = self.cast<Executor&>();
            const auto& s = e.input().shape;
            // A numpy view of the pinned buffer, kept alive by the executor object.
            return py::array_t<float>({e.max_batch(), s[1], s[2], s[3]}, e.pinned_input(), self);
          },
          "The pinned (max_batch, C, H, W) input buffer, e.g. warp_batch(..., out=buf[:n]).")
      .def(
          "run_pinned",
          [](Executor& e, int64_t n) {
            if (n < 1 || n > e.max_batch()) throw py::value_error("n outside [1, max_batch]");
            {
              py::gil_scoped_release release;
              e.run_pinned(n);
            }
            auto out = py::array_t<float>({n, e.output_item_size()});
            std::memcpy(out.mutable_data(), e.pinned_output(),
                        static_cast<size_t>(n * e.output_item_size()) * sizeof(float));
            return out;
          },
          py::arg("n"), "Runs the first n faces of pinned_input(); returns (n, D).")
      .def(
          "run",
          [](Executor& e, const py::array& batch) {
            if (batch.dtype().kind() != 'f' || batch.itemsize() != 4) {
              throw py::type_error("batch must be float32, got " + dtype_str(batch));
            }
            if (!(batch.flags() & py::array::c_style)) {
              throw py::value_error("batch must be C-contiguous");
            }
            const auto& s = e.input().shape;
            if (batch.ndim() != 4 || batch.shape(1) != s[1] || batch.shape(2) != s[2] ||
                batch.shape(3) != s[3]) {
              throw py::value_error("batch must have shape (N, " + std::to_string(s[1]) + ", " +
                                    std::to_string(s[2]) + ", " + std::to_string(s[3]) + "), got " +
                                    shape_str(batch));
            }
            const int64_t n = batch.shape(0);
            auto out = py::array_t<float>({n, e.output_item_size()});
            const auto* src = static_cast<const float*>(batch.data());
            float* dst = out.mutable_data();
            {
              py::gil_scoped_release release;
              e.run(src, n, dst);
            }
            return out;
          },
          py::arg("batch"), "float32 (N, C, H, W) -> (N, D); any N, split by max_batch.");

  py::class_<trt::DevicePipeline>(
      m, "TrtDevicePipeline",
      "Faces of one image -> descriptors on the GPU: CUDA warp into the engine's device input.")
      .def(py::init<Executor&>(), py::arg("engine"), py::keep_alive<1, 2>())
      .def(
          "run",
          [](trt::DevicePipeline& p, const py::array& image, const py::array& transforms,
             int64_t size, const std::array<float, 3>& mean, float scale, bool bgr_out) {
            const ImageView view = image_view(image, false);
            const std::vector<double> t = transforms_vec(transforms);
            const WarpParams params = warp_params(size, mean, scale, 0, bgr_out);
            validate(view, params);
            const auto n = static_cast<int64_t>(t.size() / 6);
            auto out = py::array_t<float>({n, p.output_item_size()});
            float* dst = out.mutable_data();
            {
              py::gil_scoped_release release;
              p.run(view, t.data(), n, params, dst);
            }
            return out;
          },
          py::arg("image"), py::arg("transforms"), py::arg("size"), py::arg("mean"),
          py::arg("scale"), py::arg("bgr_out"),
          "uint8 (H, W, 3) RGB image + float64 (N, 2, 3) chip transforms -> float32 (N, D).");
}

}  // namespace maskid::bind
