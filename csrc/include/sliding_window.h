// Window arithmetic of TransNeXt's sliding-window attention, shared by the CPU and CUDA kernels.
//
// Every query (y, x) of an H x W map sees a `window x window` neighbourhood; window position
// l = dy * window + dx (row-major, as F.unfold orders it) is key (y + dy - r, x + dx - r) with
// r = window / 2. Keys outside the map are zero padding: their logit is -inf and they add
// nothing to any sum or gradient.
//
// Backward passes that would scatter into keys/values are written as gathers over the
// *transposed* window instead: key m receives from query m - (dy - r, dx - r) at the same window
// position. One output row is then written by one CPU task or one CUDA thread, without atomics,
// and results are deterministic.
//
// The functions here hold all of the arithmetic; the device files only map rows/channels to
// threads. The CPU ops therefore test exactly the code the CUDA kernels run.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define SW_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define SW_HOST_DEVICE inline
#endif

// Host loops over the head dimension may be reordered into SIMD lanes (a float reduction is not
// vectorised otherwise); device code has one channel per thread and needs nothing.
#define SW_PRAGMA(x) _Pragma(#x)
#if defined(_OPENMP) && !defined(__CUDA_ARCH__)
#define SW_SIMD SW_PRAGMA(omp simd)
#define SW_SIMD_SUM(var) SW_PRAGMA(omp simd reduction(+ : var))
#else
#define SW_SIMD
#define SW_SIMD_SUM(var)
#endif

namespace mmtransnext {
namespace sliding_window {

// Map size and window side; `window` is odd.
struct Geometry {
  int64_t height;
  int64_t width;
  int window;

  SW_HOST_DEVICE int radius() const { return window / 2; }
  SW_HOST_DEVICE int positions() const { return window * window; }
  SW_HOST_DEVICE int64_t length() const { return height * width; }
};

// Key row seen by query (y, x) at window position (dy, dx), or -1 outside the map.
SW_HOST_DEVICE int64_t window_key(const Geometry& g, int64_t y, int64_t x, int dy, int dx) {
  const int64_t ky = y + dy - g.radius();
  const int64_t kx = x + dx - g.radius();
  if (ky < 0 || ky >= g.height || kx < 0 || kx >= g.width) return -1;
  return ky * g.width + kx;
}

// Transposed window: the query row whose window position (dy, dx) is key (y, x), or -1 when
// that query would lie outside the map.
SW_HOST_DEVICE int64_t window_query(const Geometry& g, int64_t y, int64_t x, int dy, int dx) {
  const int64_t qy = y - dy + g.radius();
  const int64_t qx = x - dx + g.radius();
  if (qy < 0 || qy >= g.height || qx < 0 || qx >= g.width) return -1;
  return qy * g.width + qx;
}

// sum_c a[c] * b[c], accumulated in acc_t (float for half/bfloat16/float, double for double).
template <typename acc_t, typename T>
SW_HOST_DEVICE acc_t dot(const T* __restrict__ a, const T* __restrict__ b, int64_t count) {
  acc_t sum = 0;
  SW_SIMD_SUM(sum)
  for (int64_t c = 0; c < count; ++c) {
    sum += static_cast<acc_t>(a[c]) * static_cast<acc_t>(b[c]);
  }
  return sum;
}

// acc[c] += alpha * x[c]
template <typename acc_t, typename T>
SW_HOST_DEVICE void axpy(acc_t* __restrict__ acc, acc_t alpha, const T* __restrict__ x,
                         int64_t count) {
  SW_SIMD
  for (int64_t c = 0; c < count; ++c) {
    acc[c] += alpha * static_cast<acc_t>(x[c]);
  }
}

// Logit of query (y, x) at window position (dy, dx): q . k[key] + bias, -inf outside the map.
// `k` points at row 0 of the (batch, head) plane, rows `k_stride` elements apart.
template <typename acc_t, typename T>
SW_HOST_DEVICE acc_t window_logit(const Geometry& g, int64_t y, int64_t x, int dy, int dx,
                                  const T* q_row, const T* k, int64_t k_stride, int64_t dim,
                                  acc_t bias) {
  const int64_t key = window_key(g, y, x, dy, dx);
  if (key < 0) return -static_cast<acc_t>(INFINITY);
  return dot<acc_t>(q_row, k + key * k_stride, dim) + bias;
}

// Gradient of an attention weight of av: grad_out . v[key], zero outside the map (whatever the
// weight's value there, it never touched v).
template <typename acc_t, typename T>
SW_HOST_DEVICE acc_t window_weight_grad(const Geometry& g, int64_t y, int64_t x, int dy, int dx,
                                        const T* grad_out_row, const T* v, int64_t v_stride,
                                        int64_t dim) {
  const int64_t key = window_key(g, y, x, dy, dx);
  if (key < 0) return 0;
  return dot<acc_t>(grad_out_row, v + key * v_stride, dim);
}

// acc[0:count] += sum_l weights[l] * rows[window_key(l)][0:count] over in-map positions.
// Forward of av (weights = attn, rows = v) and grad_q of qk (weights = grad_attn, rows = k).
// The CPU passes blocks of up to 8 channels (kept in registers), a CUDA thread one channel.
template <typename acc_t, typename T>
SW_HOST_DEVICE void window_gather(const Geometry& g, int64_t y, int64_t x, const T* weights,
                                  const T* rows, int64_t row_stride, int64_t count,
                                  acc_t* acc) {
  for (int dy = 0; dy < g.window; ++dy) {
    for (int dx = 0; dx < g.window; ++dx) {
      const int64_t key = window_key(g, y, x, dy, dx);
      if (key < 0) continue;
      axpy(acc, static_cast<acc_t>(weights[dy * g.window + dx]), rows + key * row_stride, count);
    }
  }
}

// acc[0:count] += sum_l weights[query(l)][l] * rows[query(l)][0:count] for key (y, x), over the
// queries that see this key (the transposed window). grad_k of qk (weights = grad_attn,
// rows = q) and grad_v of av (weights = attn, rows = grad_out). `weights` points at the plane's
// row 0, rows `weight_stride` elements apart, window positions contiguous.
template <typename acc_t, typename T>
SW_HOST_DEVICE void window_gather_transposed(const Geometry& g, int64_t y, int64_t x,
                                             const T* weights, int64_t weight_stride,
                                             const T* rows, int64_t row_stride, int64_t count,
                                             acc_t* acc) {
  for (int dy = 0; dy < g.window; ++dy) {
    for (int dx = 0; dx < g.window; ++dx) {
      const int64_t query = window_query(g, y, x, dy, dx);
      if (query < 0) continue;
      const acc_t weight = static_cast<acc_t>(weights[query * weight_stride + dy * g.window + dx]);
      axpy(acc, weight, rows + query * row_stride, count);
    }
  }
}

// Contribution of grad_attn[query (y, x), (dy, dx)] to grad_rpb: itself in the map, 0 outside.
template <typename acc_t, typename T>
SW_HOST_DEVICE acc_t bias_grad_term(const Geometry& g, int64_t y, int64_t x, int dy, int dx,
                                    const T* grad_row) {
  if (window_key(g, y, x, dy, dx) < 0) return 0;
  return static_cast<acc_t>(grad_row[dy * g.window + dx]);
}

}  // namespace sliding_window
}  // namespace mmtransnext
