#pragma once
// Face-chip preprocessing: warp, colour order, normalisation and NCHW layout in one pass.
// The output planes are RGB, or BGR with bgr_out (each model states its order in its contract).
//
// Sampling follows dlib's extract_image_chip exactly, so descriptors match dlib's:
//   (x, y) = M * (col, row, 1) in double; left = floor(x), top = floor(y);
//   outside [0, W-1) x [0, H-1) the pixel is 0; otherwise bilinear in double, clamped to [0, 255]
//   and truncated to uint8; then out = (float(v) - mean[c]) * scale.
#include <array>
#include <cstdint>

namespace maskid {

// A read-only view of an 8-bit, 3-channel image with arbitrary (possibly negative) byte strides.
struct ImageView {
  const uint8_t* data = nullptr;  // address of pixel (row 0, col 0, channel 0)
  int64_t height = 0;
  int64_t width = 0;
  int64_t row_stride = 0;      // bytes between rows
  int64_t col_stride = 3;      // bytes between pixels of a row
  int64_t channel_stride = 1;  // bytes between channels of a pixel
  bool bgr = false;            // channel order of the source
};

struct WarpParams {
  int64_t size = 150;                  // chip side S
  std::array<float, 3> mean{0, 0, 0};  // per output channel (in the output's order)
  float scale = 1.0f;
  unsigned threads = 0;  // 0 = all cores
  bool bgr_out = false;  // channel order of the output planes (the model's, e.g. OMZ's BGR)
};

// Throws std::invalid_argument on a bad view or parameters.
void validate(const ImageView& image, const WarpParams& params);

// transforms: n row-major 2x3 float64 matrices mapping chip (col, row, 1) -> image (x, y).
// out: n * 3 * S * S float32, C-contiguous NCHW. Runs on the global thread pool.
void warp_batch(const ImageView& image, const double* transforms, int64_t n,
                const WarpParams& params, float* out);

// One output row of one face: the building block shared by the CPU loop and its tests.
void warp_row(const ImageView& image, const double* m, int64_t row, const WarpParams& params,
              float* out_face);

}  // namespace maskid
