#pragma once
// numpy <-> core views, shared by the binding files. Checks dtypes and shapes; never casts.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <array>
#include <memory>
#include <string>
#include <vector>

#include "maskid/preprocess.hpp"

namespace maskid::bind {

namespace py = pybind11;

inline std::string shape_str(const py::array& a) {
  std::string s = "(";
  for (py::ssize_t i = 0; i < a.ndim(); ++i) s += (i ? ", " : "") + std::to_string(a.shape(i));
  return s + (a.ndim() == 1 ? ",)" : ")");
}

inline std::string dtype_str(const py::array& a) { return py::str(a.dtype()).cast<std::string>(); }

// Any uint8 H x W x 3 array, any strides (slices, channel-reversed views), read in place.
inline ImageView image_view(const py::array& img, bool bgr) {
  if (img.dtype().kind() != 'u' || img.itemsize() != 1) {
    throw py::type_error("image must be uint8, got " + dtype_str(img) +
                         " (convert explicitly; maskid does not cast silently)");
  }
  if (img.ndim() != 3 || img.shape(2) != 3) {
    throw py::value_error("image must have shape (H, W, 3), got " + shape_str(img));
  }
  ImageView v;
  v.data = static_cast<const uint8_t*>(img.data());
  v.height = img.shape(0);
  v.width = img.shape(1);
  v.row_stride = img.strides(0);
  v.col_stride = img.strides(1);
  v.channel_stride = img.strides(2);
  v.bgr = bgr;
  return v;
}

// float64 (N, 2, 3) or (2, 3) -> N packed row-major matrices (tiny, so a copy is fine).
inline std::vector<double> transforms_vec(const py::array& t) {
  if (t.dtype().kind() != 'f' || t.itemsize() != 8) {
    throw py::type_error("transforms must be float64, got " + dtype_str(t));
  }
  const bool single = t.ndim() == 2;
  if (!((single && t.shape(0) == 2 && t.shape(1) == 3) ||
        (t.ndim() == 3 && t.shape(1) == 2 && t.shape(2) == 3))) {
    throw py::value_error("transforms must have shape (N, 2, 3) or (2, 3), got " + shape_str(t));
  }
  const py::ssize_t n = single ? 1 : t.shape(0);
  const int d = single ? 0 : 1;
  const auto* base = static_cast<const char*>(t.data());
  std::vector<double> out(static_cast<size_t>(n) * 6);
  for (py::ssize_t f = 0; f < n; ++f) {
    for (int i = 0; i < 2; ++i) {
      for (int j = 0; j < 3; ++j) {
        const py::ssize_t off =
            (single ? 0 : f * t.strides(0)) + i * t.strides(d) + j * t.strides(d + 1);
        out[f * 6 + i * 3 + j] = *reinterpret_cast<const double*>(base + off);
      }
    }
  }
  return out;
}

inline WarpParams warp_params(int64_t size, const std::array<float, 3>& mean, float scale,
                              unsigned threads, bool bgr_out = false) {
  WarpParams p;
  p.bgr_out = bgr_out;
  p.size = size;
  p.mean = mean;
  p.scale = scale;
  p.threads = threads;
  return p;
}

// The caller's float32 C-contiguous (N, 3, S, S) array, or a new one owned by a capsule.
inline py::array_t<float> output_array(const py::object& out, int64_t n, int64_t s) {
  const std::array<py::ssize_t, 4> shape{n, 3, s, s};
  if (out.is_none()) {
    const size_t count = static_cast<size_t>(n * 3 * s * s);
    auto buf = std::make_unique<float[]>(count == 0 ? 1 : count);
    float* ptr = buf.get();
    py::capsule owner(buf.release(), [](void* p) { delete[] static_cast<float*>(p); });
    return py::array_t<float>(shape, ptr, owner);
  }
  if (!py::isinstance<py::array>(out)) throw py::type_error("out must be a numpy array");
  auto a = py::reinterpret_borrow<py::array>(out);
  if (a.dtype().kind() != 'f' || a.itemsize() != 4) {
    throw py::type_error("out must be float32, got " + dtype_str(a));
  }
  if (a.ndim() != 4 || a.shape(0) != n || a.shape(1) != 3 || a.shape(2) != s || a.shape(3) != s) {
    throw py::value_error("out must have shape (" + std::to_string(n) + ", 3, " +
                          std::to_string(s) + ", " + std::to_string(s) + "), got " + shape_str(a));
  }
  if (!(a.flags() & py::array::c_style)) throw py::value_error("out must be C-contiguous");
  if (!a.writeable()) throw py::value_error("out is read-only");
  return py::reinterpret_borrow<py::array_t<float>>(a);
}

}  // namespace maskid::bind
