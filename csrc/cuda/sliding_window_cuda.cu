// CUDA kernels of the sliding-window ops: float32/float64/float16/bfloat16, accumulation in
// float (double for float64). Threads only map an output element to its coordinates; the
// arithmetic is the one in sliding_window.h, which the CPU ops run and the tests check.
//
//   dot kernels      one thread per (row, window position): qk logits, av grad_attn
//   gather kernels   one thread per (row, channel): av output, qk grad_q (window), qk grad_k and
//                    av grad_v (transposed window: a gather, so no atomics)
//   bias kernel      one block per (head, window position): grad_rpb, a sum over batch and rows
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>

#include "sliding_window.h"
#include "sliding_window_checks.h"

namespace mmtransnext {
namespace sliding_window {
namespace {

constexpr int kThreads = 256;

// Grid-stride loops below, so the grid may be capped.
inline unsigned int blocks_for(int64_t elements) {
  return static_cast<unsigned int>(
      std::max<int64_t>(1, std::min<int64_t>((elements + kThreads - 1) / kThreads, 1 << 20)));
}

// Coordinates of row `row` (over batch * heads * H*W) in a (batch, head) plane.
struct RowIndex {
  int64_t b, h, n, y, x;
};

__device__ __forceinline__ RowIndex decode_row(const Geometry& g, int64_t heads, int64_t row) {
  RowIndex r;
  r.n = row % g.length();
  const int64_t plane = row / g.length();
  r.h = plane % heads;
  r.b = plane / heads;
  r.y = r.n / g.width;
  r.x = r.n % g.width;
  return r;
}

template <typename T>
__device__ __forceinline__ const T* plane_ptr(const T* data, const RowStrides& s,
                                              const RowIndex& r) {
  return data + r.b * s.batch + r.h * s.head;
}

// kLogits: q . k + rpb (-inf outside) for qk; else grad_out . v (0 outside) for av's grad_attn.
// `a` holds the query-side rows (q or grad_out), `b` the window-side rows (k or v).
template <typename T, bool kLogits>
__global__ void window_dot_kernel(const T* a, RowStrides as, const T* b, RowStrides bs,
                                  const T* rpb, T* out, Geometry g, int64_t heads, int64_t dim,
                                  int64_t total) {
  using acc_t = at::opmath_type<T>;
  const int L = g.positions();
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const int l = static_cast<int>(i % L);
    const RowIndex r = decode_row(g, heads, i / L);
    const int dy = l / g.window, dx = l % g.window;
    const T* a_row = plane_ptr(a, as, r) + r.n * as.row;
    const T* b_plane = plane_ptr(b, bs, r);
    acc_t value;
    if (kLogits) {
      value = window_logit<acc_t>(g, r.y, r.x, dy, dx, a_row, b_plane, bs.row, dim,
                                  static_cast<acc_t>(rpb[r.h * L + l]));
    } else {
      value = window_weight_grad<acc_t>(g, r.y, r.x, dy, dx, a_row, b_plane, bs.row, dim);
    }
    out[i] = static_cast<T>(value);
  }
}

// kTransposed false: out[n] = sum_l weights[n, l] * rows[key(n, l)]   (av output, qk grad_q)
// kTransposed true:  out[m] = sum_l weights[query(m, l), l] * rows[query(m, l)]
//                                                                    (qk grad_k, av grad_v)
template <typename T, bool kTransposed>
__global__ void window_gather_kernel(const T* weights, RowStrides ws, const T* rows,
                                     RowStrides rs, T* out, Geometry g, int64_t heads,
                                     int64_t dim, int64_t total) {
  using acc_t = at::opmath_type<T>;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const int64_t c = i % dim;
    const RowIndex r = decode_row(g, heads, i / dim);
    const T* w_plane = plane_ptr(weights, ws, r);
    const T* rows_c = plane_ptr(rows, rs, r) + c;
    acc_t acc = 0;
    if (kTransposed) {
      window_gather_transposed<acc_t>(g, r.y, r.x, w_plane, ws.row, rows_c, rs.row, 1, &acc);
    } else {
      window_gather<acc_t>(g, r.y, r.x, w_plane + r.n * ws.row, rows_c, rs.row, 1, &acc);
    }
    out[i] = static_cast<T>(acc);
  }
}

// grad_rpb[h, l] = sum over batch and in-map queries of grad_attn[b, h, n, l].
template <typename T>
__global__ void bias_grad_kernel(const T* grad, RowStrides gs, T* grad_rpb, Geometry g,
                                 int64_t batch, int64_t heads) {
  using acc_t = at::opmath_type<T>;
  __shared__ acc_t partial[kThreads];
  const int L = g.positions();
  const int64_t h = blockIdx.x / L;
  const int l = static_cast<int>(blockIdx.x % L);
  const int dy = l / g.window, dx = l % g.window;
  acc_t sum = 0;
  for (int64_t i = threadIdx.x; i < batch * g.length(); i += blockDim.x) {
    const int64_t b = i / g.length(), n = i % g.length();
    const T* grad_row = grad + b * gs.batch + h * gs.head + n * gs.row;
    sum += bias_grad_term<acc_t>(g, n / g.width, n % g.width, dy, dx, grad_row);
  }
  partial[threadIdx.x] = sum;
  __syncthreads();
  for (int stride = blockDim.x / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride) partial[threadIdx.x] += partial[threadIdx.x + stride];
    __syncthreads();
  }
  if (threadIdx.x == 0) grad_rpb[blockIdx.x] = static_cast<T>(partial[0]);
}

void check_cuda_dtype(const char* op, const at::Tensor& t) {
  check_dtype(op, t, "CUDA", {at::kFloat, at::kDouble, at::kHalf, at::kBFloat16});
}

#define SW_DISPATCH(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, TYPE, NAME, __VA_ARGS__)

at::Tensor qk_forward(const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& rpb_in,
                      int64_t height, int64_t width, int64_t window) {
  const Geometry g = check_qk(q_in, k_in, rpb_in, height, width, window);
  check_cuda_dtype("sliding_window_qk", q_in);
  const c10::cuda::OptionalCUDAGuard guard(q_in.device());
  const at::Tensor q = with_contiguous_rows(q_in), k = with_contiguous_rows(k_in);
  const at::Tensor rpb = rpb_in.contiguous();
  const int64_t batch = q.size(0), heads = q.size(1), dim = q.size(3);
  at::Tensor attn = at::empty({batch, heads, g.length(), g.positions()}, q.options());
  const int64_t total = attn.numel();
  if (total == 0) return attn;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  SW_DISPATCH(q.scalar_type(), "sliding_window_qk_cuda", [&] {
    window_dot_kernel<scalar_t, true><<<blocks_for(total), kThreads, 0, stream>>>(
        q.const_data_ptr<scalar_t>(), row_strides(q), k.const_data_ptr<scalar_t>(),
        row_strides(k), rpb.const_data_ptr<scalar_t>(), attn.mutable_data_ptr<scalar_t>(), g,
        heads, dim, total);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return attn;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> qk_backward(
    const at::Tensor& grad_in, const at::Tensor& q_in, const at::Tensor& k_in, int64_t height,
    int64_t width, int64_t window) {
  const Geometry g = check_qk_backward(grad_in, q_in, k_in, height, width, window);
  check_cuda_dtype("sliding_window_qk_backward", q_in);
  const c10::cuda::OptionalCUDAGuard guard(q_in.device());
  const at::Tensor grad = with_contiguous_rows(grad_in);
  const at::Tensor q = with_contiguous_rows(q_in), k = with_contiguous_rows(k_in);
  const int64_t batch = q.size(0), heads = q.size(1), dim = q.size(3);
  at::Tensor grad_q = at::empty({batch, heads, g.length(), dim}, q.options());
  at::Tensor grad_k = at::empty({batch, heads, g.length(), dim}, q.options());
  at::Tensor grad_rpb = at::empty({heads, g.positions()}, q.options());
  const int64_t total = grad_q.numel();
  const auto stream = c10::cuda::getCurrentCUDAStream();
  SW_DISPATCH(q.scalar_type(), "sliding_window_qk_backward_cuda", [&] {
    if (total > 0) {
      window_gather_kernel<scalar_t, false><<<blocks_for(total), kThreads, 0, stream>>>(
          grad.const_data_ptr<scalar_t>(), row_strides(grad), k.const_data_ptr<scalar_t>(),
          row_strides(k), grad_q.mutable_data_ptr<scalar_t>(), g, heads, dim, total);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      window_gather_kernel<scalar_t, true><<<blocks_for(total), kThreads, 0, stream>>>(
          grad.const_data_ptr<scalar_t>(), row_strides(grad), q.const_data_ptr<scalar_t>(),
          row_strides(q), grad_k.mutable_data_ptr<scalar_t>(), g, heads, dim, total);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    if (heads == 0) return;
    bias_grad_kernel<scalar_t><<<static_cast<unsigned int>(heads * g.positions()), kThreads, 0,
                                 stream>>>(grad.const_data_ptr<scalar_t>(), row_strides(grad),
                                           grad_rpb.mutable_data_ptr<scalar_t>(), g, batch,
                                           heads);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {grad_q, grad_k, grad_rpb};
}

at::Tensor av_forward(const at::Tensor& attn_in, const at::Tensor& v_in, int64_t height,
                      int64_t width, int64_t window) {
  const Geometry g = check_av(attn_in, v_in, height, width, window);
  check_cuda_dtype("sliding_window_av", v_in);
  const c10::cuda::OptionalCUDAGuard guard(v_in.device());
  const at::Tensor attn = with_contiguous_rows(attn_in), v = with_contiguous_rows(v_in);
  const int64_t batch = v.size(0), heads = v.size(1), dim = v.size(3);
  at::Tensor out = at::empty({batch, heads, g.length(), dim}, v.options());
  const int64_t total = out.numel();
  if (total == 0) return out;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  SW_DISPATCH(v.scalar_type(), "sliding_window_av_cuda", [&] {
    window_gather_kernel<scalar_t, false><<<blocks_for(total), kThreads, 0, stream>>>(
        attn.const_data_ptr<scalar_t>(), row_strides(attn), v.const_data_ptr<scalar_t>(),
        row_strides(v), out.mutable_data_ptr<scalar_t>(), g, heads, dim, total);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> av_backward(const at::Tensor& grad_in,
                                               const at::Tensor& attn_in, const at::Tensor& v_in,
                                               int64_t height, int64_t width, int64_t window) {
  const Geometry g = check_av_backward(grad_in, attn_in, v_in, height, width, window);
  check_cuda_dtype("sliding_window_av_backward", v_in);
  const c10::cuda::OptionalCUDAGuard guard(v_in.device());
  const at::Tensor grad = with_contiguous_rows(grad_in);
  const at::Tensor attn = with_contiguous_rows(attn_in), v = with_contiguous_rows(v_in);
  const int64_t batch = v.size(0), heads = v.size(1), dim = v.size(3);
  at::Tensor grad_attn = at::empty({batch, heads, g.length(), g.positions()}, v.options());
  at::Tensor grad_v = at::empty({batch, heads, g.length(), dim}, v.options());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  SW_DISPATCH(v.scalar_type(), "sliding_window_av_backward_cuda", [&] {
    if (grad_attn.numel() > 0) {
      window_dot_kernel<scalar_t, false><<<blocks_for(grad_attn.numel()), kThreads, 0, stream>>>(
          grad.const_data_ptr<scalar_t>(), row_strides(grad), v.const_data_ptr<scalar_t>(),
          row_strides(v), nullptr, grad_attn.mutable_data_ptr<scalar_t>(), g, heads, dim,
          grad_attn.numel());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    if (grad_v.numel() > 0) {
      window_gather_kernel<scalar_t, true><<<blocks_for(grad_v.numel()), kThreads, 0, stream>>>(
          attn.const_data_ptr<scalar_t>(), row_strides(attn), grad.const_data_ptr<scalar_t>(),
          row_strides(grad), grad_v.mutable_data_ptr<scalar_t>(), g, heads, dim,
          grad_v.numel());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return {grad_attn, grad_v};
}

}  // namespace
}  // namespace sliding_window
}  // namespace mmtransnext

TORCH_LIBRARY_IMPL(mmtransnext, CUDA, m) {
  namespace sw = mmtransnext::sliding_window;
  m.impl("sliding_window_qk", &sw::qk_forward);
  m.impl("sliding_window_qk_backward", &sw::qk_backward);
  m.impl("sliding_window_av", &sw::av_forward);
  m.impl("sliding_window_av_backward", &sw::av_backward);
}
