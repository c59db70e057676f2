#pragma once
// CUDA status codes become exceptions where they arise (extending-jax's ThrowIfError).
// Only for translation units compiled with the CUDA toolkit on the include path.
#include <cuda_runtime_api.h>

#include <stdexcept>
#include <string>

namespace maskid::cuda {

class CudaError : public std::runtime_error {
 public:
  CudaError(cudaError_t code, const std::string& what) : std::runtime_error(what), code_(code) {}
  cudaError_t code() const { return code_; }

 private:
  cudaError_t code_;
};

inline void throw_if_error(cudaError_t code, const char* what) {
  if (code != cudaSuccess) {
    throw CudaError(code, std::string(what) + ": " + cudaGetErrorName(code) + " (" +
                              cudaGetErrorString(code) + ")");
  }
}

}  // namespace maskid::cuda

#define MASKID_CUDA_CHECK(expr) ::maskid::cuda::throw_if_error((expr), #expr)
