#include "maskid/preprocess.hpp"

#include <algorithm>
#include <stdexcept>
#include <string>
#include <vector>

#include "maskid/parallel.hpp"

namespace maskid {

namespace {

constexpr int64_t kMaxChip = 4096;
constexpr int64_t kMaxSide = int64_t{1} << 30;  // coordinates are converted through int32

// Below this many output pixels per thread, waking another thread costs more than it saves.
constexpr int64_t kPixelsPerThread = 16 * 1024;

}  // namespace

void validate(const ImageView& image, const WarpParams& params) {
  if (image.data == nullptr) throw std::invalid_argument("image has no data");
  if (image.height < 1 || image.width < 1) {
    throw std::invalid_argument("image must be at least 1x1, got " + std::to_string(image.height) +
                                "x" + std::to_string(image.width));
  }
  if (image.height > kMaxSide || image.width > kMaxSide) {
    throw std::invalid_argument("image side exceeds 2^30 pixels");
  }
  if (params.size < 1 || params.size > kMaxChip) {
    throw std::invalid_argument("chip size must be in [1, " + std::to_string(kMaxChip) + "], got " +
                                std::to_string(params.size));
  }
}

// Three passes over one output row, each a simple loop over columns:
//  1. coordinates: x, y, floor, validity and weights (branch-free, vectorises);
//  2. gather + bilinear in double (data-dependent addresses: scalar);
//  3. uint8 -> float, normalise, write three channel planes (vectorises).
void warp_row(const ImageView& image, const double* m, int64_t row, const WarpParams& params,
              float* out_face) {
  const int64_t s = params.size;
  // Per-thread scratch, grown once to the chip width and reused.
  thread_local std::vector<double> xs, ys;
  thread_local std::vector<int32_t> lefts, tops;
  thread_local std::vector<uint8_t> u8;
  if (static_cast<int64_t>(xs.size()) < s) {
    xs.resize(s);
    ys.resize(s);
    lefts.resize(s);
    tops.resize(s);
    u8.resize(3 * s);
  }
  double* __restrict tx = xs.data();
  double* __restrict ty = ys.data();
  int32_t* __restrict li = lefts.data();
  int32_t* __restrict ti = tops.data();

  // Locals, so the compiler knows the outputs cannot alias the matrix.
  const double m0 = m[0], m2 = m[2], m3 = m[3], m5 = m[5];
  const double r = static_cast<double>(row);
  const double bx = m[1] * r;
  const double by = m[4] * r;
  // left + 1 < W  <=>  floor(x) <= W - 2  <=>  x < W - 1 (and x >= 0 gives left >= 0).
  const double xmax = static_cast<double>(image.width - 1);
  const double ymax = static_cast<double>(image.height - 1);
  const int n = static_cast<int>(s);  // int index and a double-valued flag: both vectorise
  for (int c = 0; c < n; ++c) {
    const double cd = static_cast<double>(c);
    const double x = m0 * cd + bx + m2;
    const double y = m3 * cd + by + m5;
    // NaN fails every comparison, so it lands outside, as in dlib.
    // (Written as a double so GCC if-converts and vectorises the loop.)
    const double outside = ((x >= 0.0) & (x < xmax) & (y >= 0.0) & (y < ymax)) ? 0.0 : 1.0;
    // Clamped (NaN -> 0) so the int conversion is always defined; for x >= 0 truncation is floor.
    const double xc = std::min(xmax, std::max(0.0, x));
    const double yc = std::min(ymax, std::max(0.0, y));
    const int32_t left = static_cast<int32_t>(xc);
    const int32_t top = static_cast<int32_t>(yc);
    li[c] = left;
    ti[c] = top;
    // Weights are in [0, 1) (exact: subtracting 0.0 changes nothing); negative marks outside.
    tx[c] = (xc - static_cast<double>(left)) - 2.0 * outside;
    ty[c] = yc - static_cast<double>(top);
  }

  // Source channel for each output channel: the colour swap is folded into these offsets
  // (a swap when the source order differs from the output's).
  const int64_t chs = image.channel_stride;
  const bool swap = image.bgr != params.bgr_out;
  const int64_t ch0 = (swap ? 2 : 0) * chs;
  const int64_t ch1 = chs;
  const int64_t ch2 = (swap ? 0 : 2) * chs;
  const int64_t chan[3] = {ch0, ch1, ch2};
  uint8_t* __restrict v8 = u8.data();
  const uint8_t* base = image.data;
  const int64_t rs = image.row_stride;
  const int64_t cs = image.col_stride;
  for (int c = 0; c < n; ++c) {
    if (tx[c] < 0.0) {
      v8[c] = v8[s + c] = v8[2 * s + c] = 0;
      continue;
    }
    const double fx = tx[c];
    const double fy = ty[c];
    const uint8_t* p00 = base + ti[c] * rs + li[c] * cs;
    const uint8_t* p01 = p00 + cs;
    const uint8_t* p10 = p00 + rs;
    const uint8_t* p11 = p10 + cs;
    for (int k = 0; k < 3; ++k) {
      const int64_t o = chan[k];
      const double v =
          (1 - fy) * ((1 - fx) * p00[o] + fx * p01[o]) + fy * ((1 - fx) * p10[o] + fx * p11[o]);
      v8[k * s + c] = static_cast<uint8_t>(std::min(255.0, std::max(0.0, v)));
    }
  }

  const float scale = params.scale;
  for (int k = 0; k < 3; ++k) {
    const float mean = params.mean[k];
    const uint8_t* __restrict src = v8 + k * s;
    float* __restrict dst = out_face + (k * s + row) * s;
    for (int c = 0; c < n; ++c) dst[c] = (static_cast<float>(src[c]) - mean) * scale;
  }
}

void warp_batch(const ImageView& image, const double* transforms, int64_t n,
                const WarpParams& params, float* out) {
  validate(image, params);
  if (n < 0) throw std::invalid_argument("negative number of faces");
  if (n == 0) return;
  if (transforms == nullptr || out == nullptr) throw std::invalid_argument("null buffer");
  const int64_t s = params.size;
  const int64_t rows = n * s;
  const int64_t face_stride = 3 * s * s;
  const unsigned useful =
      static_cast<unsigned>(std::clamp<int64_t>(rows * s / kPixelsPerThread, 1, 1 << 16));
  const unsigned threads = params.threads == 0 ? useful : std::min(params.threads, useful);
  // Work item = one output row of one face: faces spread across threads, and so do the rows of
  // a single large face.
  parallel_for(0, rows, threads, [&](int64_t i) {
    const int64_t face = i / s;
    warp_row(image, transforms + 6 * face, i - face * s, params, out + face * face_stride);
  });
}

}  // namespace maskid
