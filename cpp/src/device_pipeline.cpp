#include "maskid/device_pipeline.hpp"

#include <cuda_runtime.h>

#include <algorithm>
#include <stdexcept>
#include <string>

#include "maskid/cuda_check.hpp"

namespace maskid::trt {

DevicePipeline::DevicePipeline(Executor& engine) : engine_(engine), pre_(engine.stream()) {}

void DevicePipeline::run(const ImageView& image, const double* transforms, int64_t n,
                         const WarpParams& params, float* out) {
  const auto& shape = engine_.input().shape;  // (N, 3, S, S)
  if (shape.size() != 4 || shape[1] != 3 || shape[2] != params.size || shape[3] != params.size) {
    throw std::invalid_argument("chip size " + std::to_string(params.size) +
                                " does not match the engine's input");
  }
  if (n <= 0) return;
  pre_.upload(image);
  const int64_t in_item = engine_.input_item_size();
  const int64_t out_item = engine_.output_item_size();
  auto* stream = static_cast<cudaStream_t>(engine_.stream());
  for (int64_t done = 0; done < n;) {
    const int64_t k = std::min(n - done, engine_.max_batch());
    const int64_t b = std::max(k, engine_.min_batch());
    if (b > k) {  // pad up to the profile minimum; those rows are not returned
      MASKID_CUDA_CHECK(cudaMemsetAsync(engine_.device_input() + k * in_item, 0,
                                        static_cast<size_t>((b - k) * in_item) * sizeof(float),
                                        stream));
    }
    pre_.warp(transforms + done * 6, k, params, engine_.device_input());
    engine_.enqueue(b);
    MASKID_CUDA_CHECK(cudaMemcpyAsync(out + done * out_item, engine_.device_output(),
                                      static_cast<size_t>(k * out_item) * sizeof(float),
                                      cudaMemcpyDeviceToHost, stream));
    engine_.synchronize();  // the next chunk's warp reuses the input buffer
    done += k;
  }
}

}  // namespace maskid::trt
