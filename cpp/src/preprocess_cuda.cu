// CUDA face-chip preprocessing. Built with --fmad=false so every double operation rounds as in
// the CPU path (src/preprocess.cpp) and the uint8 truncation gives identical pixels.
#include <cuda_runtime.h>

#include <cstring>
#include <stdexcept>
#include <vector>

#include "maskid/cuda_check.hpp"
#include "maskid/preprocess_cuda.hpp"

namespace maskid::cuda {

namespace {

struct KernelArgs {
  const uint8_t* image;
  int64_t height, width, row_stride, col_stride;
  int64_t chan[3];  // byte offset of the source channel for each RGB output channel
  const double* transforms;
  int size;
  float mean[3];
  float scale;
  float* out;
};

// One thread per output pixel; blockIdx.z is the face. Consecutive threads write consecutive
// columns, so the three plane stores coalesce.
__global__ void warp_kernel(KernelArgs a) {
  const int col = blockIdx.x * blockDim.x + threadIdx.x;
  const int row = blockIdx.y * blockDim.y + threadIdx.y;
  const int face = blockIdx.z;
  if (col >= a.size || row >= a.size) return;
  const double* m = a.transforms + 6 * face;
  const double c = col;
  const double r = row;
  const double x = m[0] * c + m[1] * r + m[2];
  const double y = m[3] * c + m[4] * r + m[5];
  const double left = floor(x);
  const double top = floor(y);
  const bool inside = left >= 0.0 && top >= 0.0 && left + 1.0 < static_cast<double>(a.width) &&
                      top + 1.0 < static_cast<double>(a.height);
  const int64_t plane = static_cast<int64_t>(a.size) * a.size;
  float* out = a.out + face * 3 * plane + static_cast<int64_t>(row) * a.size + col;
  if (!inside) {
    for (int k = 0; k < 3; ++k) out[k * plane] = (0.0f - a.mean[k]) * a.scale;
    return;
  }
  const double tx = x - left;
  const double ty = y - top;
  const uint8_t* p00 = a.image + static_cast<int64_t>(top) * a.row_stride +
                       static_cast<int64_t>(left) * a.col_stride;
  const uint8_t* p01 = p00 + a.col_stride;
  const uint8_t* p10 = p00 + a.row_stride;
  const uint8_t* p11 = p10 + a.col_stride;
  for (int k = 0; k < 3; ++k) {
    const int64_t o = a.chan[k];
    const double v =
        (1 - ty) * ((1 - tx) * p00[o] + tx * p01[o]) + ty * ((1 - tx) * p10[o] + tx * p11[o]);
    const auto u = static_cast<uint8_t>(fmin(255.0, fmax(0.0, v)));
    out[k * plane] = (static_cast<float>(u) - a.mean[k]) * a.scale;
  }
}

template <typename T>
struct DeviceBuffer {
  T* ptr = nullptr;
  size_t count = 0;
  ~DeviceBuffer() {
    if (ptr) cudaFree(ptr);
  }
  void reserve(size_t n) {
    if (n <= count) return;
    if (ptr) MASKID_CUDA_CHECK(cudaFree(ptr));
    ptr = nullptr;
    count = 0;
    MASKID_CUDA_CHECK(cudaMalloc(&ptr, n * sizeof(T)));
    count = n;
  }
};

}  // namespace

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no device / insufficient driver" status
    return 0;
  }
  return n;
}

void warp_batch_device(const ImageView& image, const double* d_transforms, int64_t n,
                       const WarpParams& params, float* d_out, void* stream) {
  validate(image, params);
  if (n < 0) throw std::invalid_argument("negative number of faces");
  if (n == 0) return;
  if (n > 65535) throw std::invalid_argument("at most 65535 faces per launch");
  KernelArgs a{};
  a.image = image.data;
  a.height = image.height;
  a.width = image.width;
  a.row_stride = image.row_stride;
  a.col_stride = image.col_stride;
  const int64_t cs = image.channel_stride;
  const bool swap = image.bgr != params.bgr_out;  // source order vs the model's order
  a.chan[0] = (swap ? 2 : 0) * cs;
  a.chan[1] = cs;
  a.chan[2] = (swap ? 0 : 2) * cs;
  a.transforms = d_transforms;
  a.size = static_cast<int>(params.size);
  for (int k = 0; k < 3; ++k) a.mean[k] = params.mean[k];
  a.scale = params.scale;
  a.out = d_out;
  const dim3 block(32, 8);
  const dim3 grid((a.size + block.x - 1) / block.x, (a.size + block.y - 1) / block.y,
                  static_cast<unsigned>(n));
  warp_kernel<<<grid, block, 0, static_cast<cudaStream_t>(stream)>>>(a);
  MASKID_CUDA_CHECK(cudaGetLastError());
}

struct Preprocessor::Impl {
  cudaStream_t stream = nullptr;
  DeviceBuffer<uint8_t> image;
  DeviceBuffer<double> transforms;
  std::vector<uint8_t> packed;  // host staging for images that are not row-contiguous HWC
  ImageView device_view;
  bool uploaded = false;
};

Preprocessor::Preprocessor(void* stream) : impl_(std::make_unique<Impl>()) {
  impl_->stream = static_cast<cudaStream_t>(stream);
}

Preprocessor::~Preprocessor() = default;

const ImageView& Preprocessor::upload(const ImageView& host) {
  validate(host, WarpParams{});
  const int64_t h = host.height, w = host.width;
  impl_->image.reserve(static_cast<size_t>(h * w * 3));
  const bool hwc_rows = host.channel_stride == 1 && host.col_stride == 3 && host.row_stride > 0;
  if (hwc_rows) {
    // Pixel rows are contiguous: one 2D copy handles any row pitch.
    MASKID_CUDA_CHECK(cudaMemcpy2DAsync(impl_->image.ptr, w * 3, host.data, host.row_stride, w * 3,
                                        h, cudaMemcpyHostToDevice, impl_->stream));
  } else {
    // Pack on the host first (slices, channel-reversed or transposed views).
    impl_->packed.resize(static_cast<size_t>(h * w * 3));
    uint8_t* dst = impl_->packed.data();
    for (int64_t r = 0; r < h; ++r) {
      for (int64_t c = 0; c < w; ++c) {
        const uint8_t* p = host.data + r * host.row_stride + c * host.col_stride;
        for (int k = 0; k < 3; ++k) *dst++ = p[k * host.channel_stride];
      }
    }
    MASKID_CUDA_CHECK(cudaMemcpyAsync(impl_->image.ptr, impl_->packed.data(), impl_->packed.size(),
                                      cudaMemcpyHostToDevice, impl_->stream));
    // The staging buffer is pageable and reused: the copy must finish before it is touched again.
    MASKID_CUDA_CHECK(cudaStreamSynchronize(impl_->stream));
  }
  ImageView v;
  v.data = impl_->image.ptr;
  v.height = h;
  v.width = w;
  v.row_stride = w * 3;
  v.col_stride = 3;
  v.channel_stride = 1;
  v.bgr = host.bgr;
  impl_->device_view = v;
  impl_->uploaded = true;
  return impl_->device_view;
}

void Preprocessor::warp(const double* host_transforms, int64_t n, const WarpParams& params,
                        float* d_out) {
  if (!impl_->uploaded) throw std::logic_error("Preprocessor::warp before upload");
  if (n <= 0) return;
  impl_->transforms.reserve(static_cast<size_t>(n) * 6);
  MASKID_CUDA_CHECK(cudaMemcpyAsync(impl_->transforms.ptr, host_transforms,
                                    static_cast<size_t>(n) * 6 * sizeof(double),
                                    cudaMemcpyHostToDevice, impl_->stream));
  warp_batch_device(impl_->device_view, impl_->transforms.ptr, n, params, d_out, impl_->stream);
}

void Preprocessor::synchronize() { MASKID_CUDA_CHECK(cudaStreamSynchronize(impl_->stream)); }

void warp_batch_host(const ImageView& image, const double* transforms, int64_t n,
                     const WarpParams& params, float* out) {
  validate(image, params);
  if (n <= 0) return;
  const size_t bytes = static_cast<size_t>(n * 3 * params.size * params.size) * sizeof(float);
  DeviceBuffer<float> d_out;
  d_out.reserve(bytes / sizeof(float));
  Preprocessor pre;
  pre.upload(image);
  pre.warp(transforms, n, params, d_out.ptr);
  MASKID_CUDA_CHECK(cudaMemcpy(out, d_out.ptr, bytes, cudaMemcpyDeviceToHost));
  pre.synchronize();
}

}  // namespace maskid::cuda
