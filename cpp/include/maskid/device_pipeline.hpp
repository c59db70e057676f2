#pragma once
// Faces of one host image -> descriptors on the GPU, with no host round trip between the warp
// and the engine: the image goes up once, the CUDA kernel writes every chip straight into the
// TensorRT engine's device input, and only the descriptors come back. Needs CUDA and TensorRT.
#include <cstdint>

#include "maskid/preprocess.hpp"
#include "maskid/preprocess_cuda.hpp"
#include "maskid/trt_executor.hpp"

namespace maskid::trt {

class DevicePipeline {
 public:
  // `engine` must outlive the pipeline; the warp runs on the engine's own CUDA stream.
  explicit DevicePipeline(Executor& engine);

  // transforms: n row-major 2x3 float64 matrices (chip -> image); out: n * output_item_size
  // floats. params.size must be the engine's input side. Any n, chunked by max_batch.
  void run(const ImageView& image, const double* transforms, int64_t n, const WarpParams& params,
           float* out);

  int64_t output_item_size() const { return engine_.output_item_size(); }

 private:
  Executor& engine_;
  cuda::Preprocessor pre_;
};

}  // namespace maskid::trt
