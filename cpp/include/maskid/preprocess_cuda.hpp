#pragma once
// The CUDA twin of maskid/preprocess.hpp: the same sampling, colour swap, normalisation and NCHW
// layout, all faces in one launch, writing straight into a device buffer (an engine input).
// Declared without CUDA headers so plain C++ code can include it; streams are cudaStream_t
// passed as void*.
#include <cstdint>
#include <memory>

#include "maskid/preprocess.hpp"

namespace maskid::cuda {

// Number of CUDA devices usable now (0 without a driver or GPU; never throws for that).
int device_count();

// image.data points to device memory (any strides, as in ImageView); d_transforms to n * 6
// device doubles; d_out to n * 3 * S * S device floats. Asynchronous on `stream`.
void warp_batch_device(const ImageView& image, const double* d_transforms, int64_t n,
                       const WarpParams& params, float* d_out, void* stream);

// Owns reusable device buffers: upload an image once, then warp any number of faces from it
// into a device pointer. Not thread-safe; one per stream.
class Preprocessor {
 public:
  explicit Preprocessor(void* stream = nullptr);
  ~Preprocessor();
  Preprocessor(const Preprocessor&) = delete;
  Preprocessor& operator=(const Preprocessor&) = delete;

  // Copies a host image (any strides) to the device as packed HWC; returns the device view.
  const ImageView& upload(const ImageView& host);
  // Warps n faces of the last uploaded image into d_out (device), asynchronously.
  void warp(const double* host_transforms, int64_t n, const WarpParams& params, float* d_out);
  void synchronize();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Host in, host out (for tests and the Python binding): upload, warp, download, synchronise.
void warp_batch_host(const ImageView& image, const double* transforms, int64_t n,
                     const WarpParams& params, float* out);

}  // namespace maskid::cuda
