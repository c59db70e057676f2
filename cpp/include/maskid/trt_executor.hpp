#pragma once
// TensorRT executor: one serialized engine with one float32 input (N, C, H, W) and one float32
// output (N, ...), dynamic batch through optimisation profile 0, its own CUDA stream and pinned
// host buffers. Written against the TensorRT 8.5+/10 name-based API (enqueueV3). Declared
// without TensorRT or CUDA headers; compiled only where both are found.
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace maskid::trt {

struct TensorInfo {
  std::string name;
  std::vector<int64_t> shape;  // as built; -1 where dynamic (the batch axis)
};

class Executor {
 public:
  // Deserializes `path` on the current CUDA device. Throws std::runtime_error with TensorRT's own
  // message when the engine is corrupt, was built by another TensorRT version or for another GPU.
  explicit Executor(const std::string& path);
  ~Executor();
  Executor(const Executor&) = delete;
  Executor& operator=(const Executor&) = delete;

  const TensorInfo& input() const;
  const TensorInfo& output() const;
  int64_t min_batch() const;  // from optimisation profile 0 (== max_batch for a static engine)
  int64_t max_batch() const;
  int64_t input_item_size() const;   // floats per face: C * H * W
  int64_t output_item_size() const;  // floats per face
  static int tensorrt_version();     // getInferLibVersion(), e.g. 100300 for 10.3.0

  // Host to host: any n, split into chunks of at most max_batch (padded up to min_batch, never
  // dropped). `in` is n * input_item_size floats, `out` n * output_item_size floats.
  void run(const float* in, int64_t n, float* out);

  // Zero-copy path: fill pinned_input() (capacity max_batch faces), then run_pinned(n) leaves
  // the result in pinned_output(). Or write the device input directly (the CUDA preprocessor),
  // then enqueue(n) + synchronize().
  float* pinned_input();
  const float* pinned_output() const;
  void run_pinned(int64_t n);
  float* device_input();
  const float* device_output() const;
  void* stream() const;  // cudaStream_t
  void enqueue(int64_t n);
  void synchronize();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace maskid::trt
