// CPU kernels of expand_bias (schema and semantics: csrc/bias_expand.cpp).
//
// The output (heads, H, W, h, w) is written once, row by row; every row reads one small
// (h, |columns|) slice of the folded grid, which stays in cache. The backward accumulates into
// the folded grid; each (head, y) slice belongs to one task, so there are no write races.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

namespace mmtransnext {
namespace bias_expand {
namespace {

void check_taps(const at::Tensor& rows, const at::Tensor& weights) {
  TORCH_CHECK(rows.dim() == 3 && rows.scalar_type() == at::kLong,
              "expand_bias: rows must be a 3-D int64 tensor (W, w, taps), got ", rows.sizes(),
              " ", rows.scalar_type());
  TORCH_CHECK(weights.sizes() == rows.sizes() && weights.scalar_type() == at::kFloat,
              "expand_bias: weights must be float32 with the shape of rows ", rows.sizes(),
              ", got ", weights.sizes(), " ", weights.scalar_type());
}

// One pass over the (small) taps: the int32 copy the kernels read, a range check (an index
// outside the folded grid would read or write out of bounds) and whether every weight is 1.
at::Tensor checked_rows(const at::Tensor& rows, const at::Tensor& weights, int64_t columns,
                        bool* unit_weights) {
  TORCH_CHECK(rows.device().is_cpu() && weights.device().is_cpu(),
              "expand_bias: rows and weights must be CPU tensors on the CPU path");
  auto rows32 = at::empty(rows.sizes(), rows.options().dtype(at::kInt));
  const int64_t* r = rows.data_ptr<int64_t>();
  const float* w = weights.data_ptr<float>();
  int32_t* r32 = rows32.data_ptr<int32_t>();
  bool unit = true;
  for (int64_t i = 0; i < rows.numel(); ++i) {
    TORCH_CHECK(r[i] >= 0 && r[i] < columns, "expand_bias: rows index ", r[i],
                " outside [0, ", columns, ")");
    r32[i] = static_cast<int32_t>(r[i]);
    unit = unit && w[i] == 1.f;
  }
  *unit_weights = unit;
  return rows32;
}

// One (head, query row) slice: out[x, a, b] = sum_s w[x, b, s] * slice[a, rows[x, b, s]].
// TAPS is a compile-time tap count (1, 2, 4; 0 = read it from `taps`), UNIT says every weight
// is 1 (a pure gather). Indices are int32 copies, so a (x, b) entry is 4 bytes per tap.
template <typename scalar_t, int TAPS, bool UNIT>
void expand_slice(const scalar_t* slice, const int32_t* idx, const float* wts, scalar_t* target,
                  int64_t width, int64_t kh, int64_t kw, int64_t taps, int64_t columns) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t t = TAPS > 0 ? TAPS : taps;
  for (int64_t x = 0; x < width; ++x) {
    const int32_t* r = idx + x * kw * t;
    const float* w = wts + x * kw * t;
    scalar_t* o = target + x * kh * kw;
    for (int64_t a = 0; a < kh; ++a, o += kw) {
      const scalar_t* row = slice + a * columns;
      for (int64_t b = 0; b < kw; ++b) {
        if constexpr (UNIT && TAPS == 1) {
          o[b] = row[r[b]];
        } else {
          acc_t sum = 0;
          for (int64_t s = 0; s < t; ++s) {
            sum += static_cast<acc_t>(w[b * t + s]) * static_cast<acc_t>(row[r[b * t + s]]);
          }
          o[b] = static_cast<scalar_t>(sum);
        }
      }
    }
  }
}

at::Tensor forward(const at::Tensor& folded_in, const at::Tensor& rows_in,
                   const at::Tensor& weights_in) {
  TORCH_CHECK(folded_in.dim() == 4, "expand_bias: folded must be 4-D (heads, H, h, columns), "
              "got ", folded_in.sizes());
  check_taps(rows_in, weights_in);
  const auto folded = folded_in.contiguous();
  const auto rows = rows_in.contiguous();
  const auto weights = weights_in.contiguous();
  const int64_t heads = folded.size(0), height = folded.size(1), kh = folded.size(2);
  const int64_t columns = folded.size(3);
  const int64_t width = rows.size(0), kw = rows.size(1), taps = rows.size(2);
  bool unit = false;
  const auto rows32 = checked_rows(rows, weights, columns, &unit);
  auto out = at::empty({heads, height, width, kh, kw}, folded.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, folded.scalar_type(),
                                  "expand_bias", [&] {
    auto kernel = &expand_slice<scalar_t, 0, false>;
    if (unit && taps == 1) {
      kernel = &expand_slice<scalar_t, 1, true>;
    } else if (taps == 1) {
      kernel = &expand_slice<scalar_t, 1, false>;
    } else if (taps == 2) {
      kernel = &expand_slice<scalar_t, 2, false>;
    } else if (taps == 4) {
      kernel = &expand_slice<scalar_t, 4, false>;
    }
    const scalar_t* src = folded.data_ptr<scalar_t>();
    const int32_t* idx = rows32.data_ptr<int32_t>();
    const float* wts = weights.data_ptr<float>();
    scalar_t* dst = out.data_ptr<scalar_t>();
    at::parallel_for(0, heads * height, 1, [&](int64_t begin, int64_t end) {
      for (int64_t hy = begin; hy < end; ++hy) {
        kernel(src + hy * kh * columns, idx, wts, dst + hy * width * kh * kw, width, kh, kw,
               taps, columns);
      }
    });
  });
  return out;
}

at::Tensor backward(const at::Tensor& grad_in, const at::Tensor& rows_in,
                    const at::Tensor& weights_in, int64_t columns) {
  TORCH_CHECK(grad_in.dim() == 5, "expand_bias_backward: grad must be 5-D, got ",
              grad_in.sizes());
  check_taps(rows_in, weights_in);
  const auto grad = grad_in.contiguous();
  const auto rows = rows_in.contiguous();
  const auto weights = weights_in.contiguous();
  const int64_t heads = grad.size(0), height = grad.size(1), width = grad.size(2);
  const int64_t kh = grad.size(3), kw = grad.size(4), taps = rows.size(2);
  TORCH_CHECK(rows.size(0) == width && rows.size(1) == kw,
              "expand_bias_backward: rows ", rows.sizes(), " do not fit grad ", grad.sizes());
  bool unit = false;  // the backward has no unit-weight kernel
  const auto rows32 = checked_rows(rows, weights, columns, &unit);
  // Accumulate in the accumulation type, then cast: half inputs would lose the many small terms.
  const auto acc_dtype = at::toOpMathType(grad.scalar_type());
  auto grad_folded = at::zeros({heads, height, kh, columns}, grad.options().dtype(acc_dtype));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, grad.scalar_type(),
                                  "expand_bias_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* g = grad.data_ptr<scalar_t>();
    const int32_t* idx = rows32.data_ptr<int32_t>();
    const float* wts = weights.data_ptr<float>();
    acc_t* dst = grad_folded.data_ptr<acc_t>();
    at::parallel_for(0, heads * height, 1, [&](int64_t begin, int64_t end) {
      for (int64_t hy = begin; hy < end; ++hy) {
        const scalar_t* source = g + hy * width * kh * kw;
        acc_t* slice = dst + hy * kh * columns;
        for (int64_t x = 0; x < width; ++x) {
          const int32_t* r = idx + x * kw * taps;
          const float* w = wts + x * kw * taps;
          for (int64_t a = 0; a < kh; ++a) {
            const scalar_t* gi = source + (x * kh + a) * kw;
            acc_t* row = slice + a * columns;
            for (int64_t b = 0; b < kw; ++b) {
              const acc_t value = static_cast<acc_t>(gi[b]);
              for (int64_t s = 0; s < taps; ++s) {
                row[r[b * taps + s]] += static_cast<acc_t>(w[b * taps + s]) * value;
              }
            }
          }
        }
      }
    });
  });
  return grad_folded.to(grad.scalar_type());
}

}  // namespace
}  // namespace bias_expand
}  // namespace mmtransnext

TORCH_LIBRARY_IMPL(mmtransnext, CPU, m) {
  m.impl("expand_bias", &mmtransnext::bias_expand::forward);
  m.impl("expand_bias_backward", &mmtransnext::bias_expand::backward);
}
