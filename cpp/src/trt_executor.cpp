#include "maskid/trt_executor.hpp"

#include <NvInferRuntime.h>  // runtime only: no builder or parser needed here
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <iostream>
#include <iterator>
#include <mutex>
#include <stdexcept>
#include <type_traits>

#include "maskid/cuda_check.hpp"

namespace maskid::trt {

namespace {

// Keeps TensorRT's last error so it can be put into the exception; warnings go to stderr.
class Logger : public nvinfer1::ILogger {
 public:
  void log(Severity severity, const char* msg) noexcept override {
    if (severity <= Severity::kERROR) {
      std::lock_guard<std::mutex> lock(mutex_);
      last_error_ = msg;
    } else if (severity == Severity::kWARNING) {
      std::cerr << "maskid/TensorRT: " << msg << '\n';
    }
  }
  std::string take_error() {
    std::lock_guard<std::mutex> lock(mutex_);
    std::string e;
    e.swap(last_error_);
    return e.empty() ? "no message from TensorRT" : e;
  }

 private:
  std::mutex mutex_;
  std::string last_error_;
};

template <typename T>
struct TrtDelete {
  void operator()(T* p) const { delete p; }
};
template <typename T>
using TrtPtr = std::unique_ptr<T, TrtDelete<T>>;

std::vector<int64_t> to_vector(const nvinfer1::Dims& d) {
  std::vector<int64_t> v;
  for (int i = 0; i < d.nbDims; ++i) v.push_back(static_cast<int64_t>(d.d[i]));
  return v;
}

int64_t product(const std::vector<int64_t>& v, size_t from) {
  int64_t p = 1;
  for (size_t i = from; i < v.size(); ++i) p *= v[i];
  return p;
}

std::vector<char> read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error("cannot open TensorRT engine " + path);
  return std::vector<char>(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

}  // namespace

struct Executor::Impl {
  Logger logger;
  TrtPtr<nvinfer1::IRuntime> runtime;
  TrtPtr<nvinfer1::ICudaEngine> engine;
  TrtPtr<nvinfer1::IExecutionContext> context;
  cudaStream_t stream = nullptr;
  TensorInfo in, out;
  int64_t min_batch = 1, max_batch = 1, in_item = 0, out_item = 0;
  float* d_in = nullptr;
  float* d_out = nullptr;
  float* h_in = nullptr;   // pinned
  float* h_out = nullptr;  // pinned

  [[noreturn]] void fail(const std::string& what) {
    throw std::runtime_error(what + ": " + logger.take_error());
  }

  ~Impl() {
    // Release in reverse order of creation; errors cannot be reported from a destructor.
    context.reset();
    engine.reset();
    runtime.reset();
    if (d_in) cudaFree(d_in);
    if (d_out) cudaFree(d_out);
    if (h_in) cudaFreeHost(h_in);
    if (h_out) cudaFreeHost(h_out);
    if (stream) cudaStreamDestroy(stream);
  }

  void set_batch(int64_t n) {
    nvinfer1::Dims d{};
    d.nbDims = static_cast<int32_t>(in.shape.size());
    using Extent = std::remove_reference_t<decltype(d.d[0])>;  // int32 in TRT 8, int64 in 10
    for (size_t i = 0; i < in.shape.size(); ++i) d.d[i] = static_cast<Extent>(in.shape[i]);
    d.d[0] = static_cast<Extent>(n);
    if (!context->setInputShape(in.name.c_str(), d)) fail("setInputShape");
  }
};

Executor::Executor(const std::string& path) : impl_(std::make_unique<Impl>()) {
  Impl& m = *impl_;
  const std::vector<char> blob = read_file(path);
  m.runtime.reset(nvinfer1::createInferRuntime(m.logger));
  if (!m.runtime) m.fail("createInferRuntime");
  m.engine.reset(m.runtime->deserializeCudaEngine(blob.data(), blob.size()));
  if (!m.engine) m.fail("cannot deserialize " + path);

  int inputs = 0, outputs = 0;
  for (int32_t i = 0; i < m.engine->getNbIOTensors(); ++i) {
    const char* name = m.engine->getIOTensorName(i);
    if (m.engine->getTensorDataType(name) != nvinfer1::DataType::kFLOAT) {
      throw std::runtime_error(std::string("tensor ") + name + " is not float32");
    }
    TensorInfo t{name, to_vector(m.engine->getTensorShape(name))};
    if (m.engine->getTensorIOMode(name) == nvinfer1::TensorIOMode::kINPUT) {
      m.in = t;
      ++inputs;
    } else {
      m.out = t;
      ++outputs;
    }
  }
  if (inputs != 1 || outputs != 1) {
    throw std::runtime_error("expected one input and one output tensor, got " +
                             std::to_string(inputs) + " and " + std::to_string(outputs));
  }
  if (m.in.shape.size() != 4) throw std::runtime_error("input must be NCHW");
  for (size_t i = 1; i < m.in.shape.size(); ++i) {
    if (m.in.shape[i] < 1) throw std::runtime_error("only the batch axis may be dynamic");
  }
  if (m.in.shape[0] < 0) {
    if (m.engine->getNbOptimizationProfiles() < 1) throw std::runtime_error("no profile");
    const char* n = m.in.name.c_str();
    m.min_batch = m.engine->getProfileShape(n, 0, nvinfer1::OptProfileSelector::kMIN).d[0];
    m.max_batch = m.engine->getProfileShape(n, 0, nvinfer1::OptProfileSelector::kMAX).d[0];
  } else {
    m.min_batch = m.max_batch = m.in.shape[0];
  }
  if (m.min_batch < 1 || m.max_batch < m.min_batch) throw std::runtime_error("bad batch profile");
  m.in_item = product(m.in.shape, 1);

  MASKID_CUDA_CHECK(cudaStreamCreateWithFlags(&m.stream, cudaStreamNonBlocking));
  m.context.reset(m.engine->createExecutionContext());
  if (!m.context) m.fail("createExecutionContext");
  if (m.in.shape[0] < 0 && !m.context->setOptimizationProfileAsync(0, m.stream)) {
    m.fail("setOptimizationProfileAsync");
  }
  m.set_batch(m.max_batch);
  const std::vector<int64_t> out_shape = to_vector(m.context->getTensorShape(m.out.name.c_str()));
  if (out_shape.empty() || out_shape[0] != m.max_batch) {
    throw std::runtime_error("output's first axis must be the batch");
  }
  m.out_item = product(out_shape, 1);
  if (m.out_item < 1) throw std::runtime_error("output has a data-dependent shape");

  const size_t in_bytes = static_cast<size_t>(m.max_batch * m.in_item) * sizeof(float);
  const size_t out_bytes = static_cast<size_t>(m.max_batch * m.out_item) * sizeof(float);
  MASKID_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&m.d_in), in_bytes));
  MASKID_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&m.d_out), out_bytes));
  MASKID_CUDA_CHECK(cudaMallocHost(reinterpret_cast<void**>(&m.h_in), in_bytes));
  MASKID_CUDA_CHECK(cudaMallocHost(reinterpret_cast<void**>(&m.h_out), out_bytes));
  if (!m.context->setTensorAddress(m.in.name.c_str(), m.d_in) ||
      !m.context->setTensorAddress(m.out.name.c_str(), m.d_out)) {
    m.fail("setTensorAddress");
  }
}

Executor::~Executor() = default;

const TensorInfo& Executor::input() const { return impl_->in; }
const TensorInfo& Executor::output() const { return impl_->out; }
int64_t Executor::min_batch() const { return impl_->min_batch; }
int64_t Executor::max_batch() const { return impl_->max_batch; }
int64_t Executor::input_item_size() const { return impl_->in_item; }
int64_t Executor::output_item_size() const { return impl_->out_item; }
int Executor::tensorrt_version() { return getInferLibVersion(); }
float* Executor::pinned_input() { return impl_->h_in; }
const float* Executor::pinned_output() const { return impl_->h_out; }
float* Executor::device_input() { return impl_->d_in; }
const float* Executor::device_output() const { return impl_->d_out; }
void* Executor::stream() const { return impl_->stream; }

void Executor::enqueue(int64_t n) {
  Impl& m = *impl_;
  if (n < m.min_batch || n > m.max_batch) {
    throw std::invalid_argument("batch " + std::to_string(n) + " outside the engine's profile [" +
                                std::to_string(m.min_batch) + ", " + std::to_string(m.max_batch) +
                                "]");
  }
  m.set_batch(n);
  if (!m.context->enqueueV3(m.stream)) m.fail("enqueueV3");
}

void Executor::synchronize() { MASKID_CUDA_CHECK(cudaStreamSynchronize(impl_->stream)); }

void Executor::run_pinned(int64_t n) {
  Impl& m = *impl_;
  // Pad up to the profile minimum with whatever is in the buffer; those rows are not returned.
  const int64_t b = std::max(n, m.min_batch);
  MASKID_CUDA_CHECK(cudaMemcpyAsync(m.d_in, m.h_in, static_cast<size_t>(b * m.in_item) * 4,
                                    cudaMemcpyHostToDevice, m.stream));
  enqueue(b);
  MASKID_CUDA_CHECK(cudaMemcpyAsync(m.h_out, m.d_out, static_cast<size_t>(n * m.out_item) * 4,
                                    cudaMemcpyDeviceToHost, m.stream));
  synchronize();
}

void Executor::run(const float* in, int64_t n, float* out) {
  Impl& m = *impl_;
  for (int64_t done = 0; done < n;) {
    const int64_t k = std::min(n - done, m.max_batch);
    std::memcpy(m.h_in, in + done * m.in_item, static_cast<size_t>(k * m.in_item) * 4);
    if (k < m.min_batch) {
      std::memset(m.h_in + k * m.in_item, 0,
                  static_cast<size_t>((m.min_batch - k) * m.in_item) * 4);
    }
    run_pinned(k);
    std::memcpy(out + done * m.out_item, m.h_out, static_cast<size_t>(k * m.out_item) * 4);
    done += k;
  }
}

}  // namespace maskid::trt
