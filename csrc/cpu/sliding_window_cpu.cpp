// CPU kernels of the sliding-window ops: float32 and float64 (also float16/bfloat16, accumulated
// in float, so that CPU autocast does not fall back), parallel over row ranges with
// at::parallel_for, the arithmetic from sliding_window.h (vectorised over the head dimension).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <vector>

#include "sliding_window.h"
#include "sliding_window_checks.h"

namespace mmtransnext {
namespace sliding_window {
namespace {

// Row ranges of every (batch, head) plane, as tasks for at::parallel_for. A task is up to
// kRowsPerTask consecutive rows (queries or keys) of one plane, so that the window rows it reads
// stay in cache and per-task partial sums are per head. Heads vary fastest: q, k and v are views
// of (B, N, heads, d) projections, so the heads of one row range share cache lines and a thread
// reads them one after the other.
class RowTasks {
 public:
  static constexpr int64_t kRowsPerTask = 256;

  RowTasks(const Geometry& g, int64_t batch, int64_t heads)
      : rows_(g.length()), batch_(batch), heads_(heads),
        per_plane_((g.length() + kRowsPerTask - 1) / kRowsPerTask) {}

  int64_t count() const { return batch_ * per_plane_ * heads_; }
  int64_t chunks_per_plane() const { return per_plane_; }
  int64_t index(int64_t b, int64_t chunk, int64_t head) const {
    return (b * per_plane_ + chunk) * heads_ + head;
  }

  // Calls task_fn(task, plane, first_row, last_row) for every task, plane = b * heads + head.
  template <typename F>
  void run(const F& task_fn) const {
    // Small maps: several planes per thread so that a tiny op does not pay for a thread team.
    const int64_t grain = std::max<int64_t>(1, kRowsPerTask / rows_);
    at::parallel_for(0, count(), grain, [&](int64_t begin, int64_t end) {
      for (int64_t task = begin; task < end; ++task) {
        const int64_t head = task % heads_;
        const int64_t first = ((task / heads_) % per_plane_) * kRowsPerTask;
        const int64_t b = task / (heads_ * per_plane_);
        task_fn(task, b * heads_ + head, first, std::min(rows_, first + kRowsPerTask));
      }
    });
  }

 private:
  int64_t rows_, batch_, heads_, per_plane_;
};

// Calls row_fn(n, y, x) for rows [first, last) of a W-wide map, without a division per row.
template <typename F>
inline void for_rows(const Geometry& g, int64_t first, int64_t last, const F& row_fn) {
  int64_t y = first / g.width;
  int64_t x = first % g.width;
  for (int64_t n = first; n < last; ++n) {
    row_fn(n, y, x);
    if (++x == g.width) {
      x = 0;
      ++y;
    }
  }
}

template <typename T>
const T* plane_ptr(const at::Tensor& t, const RowStrides& s, int64_t plane, int64_t heads) {
  return t.const_data_ptr<T>() + (plane / heads) * s.batch + (plane % heads) * s.head;
}

// out[0:dim] = the sums gather(first_channel, count, acc) accumulates, channel block by channel
// block. With the compile-time block width the header's loops over channels unroll and the
// accumulators stay in registers through the whole window, instead of a row in memory being
// read and written once per window position.
constexpr int64_t kChannelBlock = 8;

template <typename T, typename Gather>
inline void gather_in_blocks(int64_t dim, T* out, const Gather& gather) {
  using acc_t = at::opmath_type<T>;
  int64_t c = 0;
  for (; c + kChannelBlock <= dim; c += kChannelBlock) {
    acc_t acc[kChannelBlock] = {};
    gather(c, kChannelBlock, acc);
    for (int64_t i = 0; i < kChannelBlock; ++i) out[c + i] = static_cast<T>(acc[i]);
  }
  if (c < dim) {
    acc_t acc[kChannelBlock] = {};
    gather(c, dim - c, acc);
    for (int64_t i = 0; i < dim - c; ++i) out[c + i] = static_cast<T>(acc[i]);
  }
}

void check_cpu_dtype(const char* op, const at::Tensor& t) {
  check_dtype(op, t, "CPU", {at::kFloat, at::kDouble, at::kHalf, at::kBFloat16});
}

#define SW_DISPATCH(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, TYPE, NAME, __VA_ARGS__)

at::Tensor qk_forward(const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& rpb_in,
                      int64_t height, int64_t width, int64_t window) {
  const Geometry g = check_qk(q_in, k_in, rpb_in, height, width, window);
  check_cpu_dtype("sliding_window_qk", q_in);
  const at::Tensor q = with_contiguous_rows(q_in), k = with_contiguous_rows(k_in);
  const at::Tensor rpb = rpb_in.contiguous();
  const int64_t batch = q.size(0), heads = q.size(1), dim = q.size(3), L = g.positions();
  at::Tensor attn = at::empty({batch, heads, g.length(), L}, q.options());
  const RowStrides qs = row_strides(q), ks = row_strides(k);

  SW_DISPATCH(q.scalar_type(), "sliding_window_qk_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    scalar_t* out = attn.mutable_data_ptr<scalar_t>();
    const scalar_t* bias_all = rpb.const_data_ptr<scalar_t>();
    RowTasks(g, batch, heads).run([&](int64_t, int64_t plane, int64_t first, int64_t last) {
      const scalar_t* qp = plane_ptr<scalar_t>(q, qs, plane, heads);
      const scalar_t* kp = plane_ptr<scalar_t>(k, ks, plane, heads);
      const scalar_t* bias = bias_all + (plane % heads) * L;
      scalar_t* out_plane = out + plane * g.length() * L;
      for_rows(g, first, last, [&](int64_t n, int64_t y, int64_t x) {
        const scalar_t* q_row = qp + n * qs.row;
        scalar_t* out_row = out_plane + n * L;
        for (int dy = 0; dy < g.window; ++dy) {
          for (int dx = 0; dx < g.window; ++dx) {
            const int l = dy * g.window + dx;
            out_row[l] = static_cast<scalar_t>(window_logit<acc_t>(
                g, y, x, dy, dx, q_row, kp, ks.row, dim, static_cast<acc_t>(bias[l])));
          }
        }
      });
    });
  });
  return attn;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> qk_backward(
    const at::Tensor& grad_in, const at::Tensor& q_in, const at::Tensor& k_in, int64_t height,
    int64_t width, int64_t window) {
  const Geometry g = check_qk_backward(grad_in, q_in, k_in, height, width, window);
  check_cpu_dtype("sliding_window_qk_backward", q_in);
  const at::Tensor grad = with_contiguous_rows(grad_in);
  const at::Tensor q = with_contiguous_rows(q_in), k = with_contiguous_rows(k_in);
  const int64_t batch = q.size(0), heads = q.size(1), dim = q.size(3), L = g.positions();
  at::Tensor grad_q = at::empty({batch, heads, g.length(), dim}, q.options());
  at::Tensor grad_k = at::empty({batch, heads, g.length(), dim}, q.options());
  at::Tensor grad_rpb = at::empty({heads, L}, q.options());
  const RowStrides qs = row_strides(q), ks = row_strides(k), gs = row_strides(grad);
  const RowTasks tasks(g, batch, heads);

  SW_DISPATCH(q.scalar_type(), "sliding_window_qk_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    // grad_rpb is a sum over batch and rows: one partial per task, added up in a fixed order
    // afterwards so that the result does not depend on the thread count.
    std::vector<acc_t> bias_partial(tasks.count() * L, acc_t(0));
    scalar_t* gq = grad_q.mutable_data_ptr<scalar_t>();
    scalar_t* gk = grad_k.mutable_data_ptr<scalar_t>();
    tasks.run([&](int64_t task, int64_t plane, int64_t first, int64_t last) {
      const scalar_t* qp = plane_ptr<scalar_t>(q, qs, plane, heads);
      const scalar_t* kp = plane_ptr<scalar_t>(k, ks, plane, heads);
      const scalar_t* gp = plane_ptr<scalar_t>(grad, gs, plane, heads);
      acc_t* bias_sum = bias_partial.data() + task * L;
      for_rows(g, first, last, [&](int64_t n, int64_t y, int64_t x) {
        const scalar_t* grad_row = gp + n * gs.row;
        // Row n as a query (grad_q: its window of keys) and as a key (grad_k: the queries whose
        // window holds it); both read rows near n, so one pass serves both.
        gather_in_blocks(dim, gq + (plane * g.length() + n) * dim,
                         [&](int64_t c, int64_t count, acc_t* acc) {
                           window_gather<acc_t>(g, y, x, grad_row, kp + c, ks.row, count, acc);
                         });
        gather_in_blocks(dim, gk + (plane * g.length() + n) * dim,
                         [&](int64_t c, int64_t count, acc_t* acc) {
                           window_gather_transposed<acc_t>(g, y, x, gp, gs.row, qp + c, qs.row,
                                                           count, acc);
                         });
        for (int dy = 0; dy < g.window; ++dy) {
          for (int dx = 0; dx < g.window; ++dx) {
            bias_sum[dy * g.window + dx] += bias_grad_term<acc_t>(g, y, x, dy, dx, grad_row);
          }
        }
      });
    });
    scalar_t* grpb = grad_rpb.mutable_data_ptr<scalar_t>();
    for (int64_t h = 0; h < heads; ++h) {
      for (int64_t l = 0; l < L; ++l) {
        acc_t sum = 0;
        for (int64_t b = 0; b < batch; ++b) {
          for (int64_t c = 0; c < tasks.chunks_per_plane(); ++c) {
            sum += bias_partial[tasks.index(b, c, h) * L + l];
          }
        }
        grpb[h * L + l] = static_cast<scalar_t>(sum);
      }
    }
  });
  return {grad_q, grad_k, grad_rpb};
}

at::Tensor av_forward(const at::Tensor& attn_in, const at::Tensor& v_in, int64_t height,
                      int64_t width, int64_t window) {
  const Geometry g = check_av(attn_in, v_in, height, width, window);
  check_cpu_dtype("sliding_window_av", v_in);
  const at::Tensor attn = with_contiguous_rows(attn_in), v = with_contiguous_rows(v_in);
  const int64_t batch = v.size(0), heads = v.size(1), dim = v.size(3);
  at::Tensor out = at::empty({batch, heads, g.length(), dim}, v.options());
  const RowStrides as = row_strides(attn), vs = row_strides(v);

  SW_DISPATCH(v.scalar_type(), "sliding_window_av_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    RowTasks(g, batch, heads).run([&](int64_t, int64_t plane, int64_t first, int64_t last) {
      const scalar_t* ap = plane_ptr<scalar_t>(attn, as, plane, heads);
      const scalar_t* vp = plane_ptr<scalar_t>(v, vs, plane, heads);
      for_rows(g, first, last, [&](int64_t n, int64_t y, int64_t x) {
        gather_in_blocks(dim, op + (plane * g.length() + n) * dim,
                         [&](int64_t c, int64_t count, acc_t* acc) {
                           window_gather<acc_t>(g, y, x, ap + n * as.row, vp + c, vs.row, count,
                                                acc);
                         });
      });
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> av_backward(const at::Tensor& grad_in,
                                               const at::Tensor& attn_in, const at::Tensor& v_in,
                                               int64_t height, int64_t width, int64_t window) {
  const Geometry g = check_av_backward(grad_in, attn_in, v_in, height, width, window);
  check_cpu_dtype("sliding_window_av_backward", v_in);
  const at::Tensor grad = with_contiguous_rows(grad_in);
  const at::Tensor attn = with_contiguous_rows(attn_in), v = with_contiguous_rows(v_in);
  const int64_t batch = v.size(0), heads = v.size(1), dim = v.size(3), L = g.positions();
  at::Tensor grad_attn = at::empty({batch, heads, g.length(), L}, v.options());
  at::Tensor grad_v = at::empty({batch, heads, g.length(), dim}, v.options());
  const RowStrides gs = row_strides(grad), as = row_strides(attn), vs = row_strides(v);

  SW_DISPATCH(v.scalar_type(), "sliding_window_av_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    scalar_t* ga = grad_attn.mutable_data_ptr<scalar_t>();
    scalar_t* gv = grad_v.mutable_data_ptr<scalar_t>();
    RowTasks(g, batch, heads).run([&](int64_t, int64_t plane, int64_t first, int64_t last) {
      const scalar_t* gp = plane_ptr<scalar_t>(grad, gs, plane, heads);
      const scalar_t* ap = plane_ptr<scalar_t>(attn, as, plane, heads);
      const scalar_t* vp = plane_ptr<scalar_t>(v, vs, plane, heads);
      for_rows(g, first, last, [&](int64_t n, int64_t y, int64_t x) {
        const scalar_t* grad_row = gp + n * gs.row;
        scalar_t* ga_row = ga + (plane * g.length() + n) * L;
        for (int dy = 0; dy < g.window; ++dy) {
          for (int dx = 0; dx < g.window; ++dx) {
            ga_row[dy * g.window + dx] = static_cast<scalar_t>(
                window_weight_grad<acc_t>(g, y, x, dy, dx, grad_row, vp, vs.row, dim));
          }
        }
        gather_in_blocks(dim, gv + (plane * g.length() + n) * dim,
                         [&](int64_t c, int64_t count, acc_t* acc) {
                           window_gather_transposed<acc_t>(g, y, x, ap, as.row, gp + c, gs.row,
                                                           count, acc);
                         });
      });
    });
  });
  return {grad_attn, grad_v};
}

}  // namespace
}  // namespace sliding_window
}  // namespace mmtransnext

TORCH_LIBRARY_IMPL(mmtransnext, CPU, m) {
  namespace sw = mmtransnext::sliding_window;
  m.impl("sliding_window_qk", &sw::qk_forward);
  m.impl("sliding_window_qk_backward", &sw::qk_backward);
  m.impl("sliding_window_av", &sw::av_forward);
  m.impl("sliding_window_av_backward", &sw::av_backward);
}
