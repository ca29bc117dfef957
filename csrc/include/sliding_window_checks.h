// Host-side argument checks of the sliding-window ops, shared by the CPU and CUDA files
// (defined in csrc/sliding_window.cpp next to the op schemas).
#pragma once

#include <ATen/core/Tensor.h>

#include <initializer_list>

#include "sliding_window.h"

namespace mmtransnext {
namespace sliding_window {

// Element strides of a (B, heads, N, C) tensor whose last dimension is contiguous.
struct RowStrides {
  int64_t batch;
  int64_t head;
  int64_t row;
};

// `t` itself when its last dimension is contiguous, else a contiguous copy. The kernels read
// any batch/head/row strides (q, k and v arrive as views of permuted projections), so only a
// strided head dimension, which would defeat the vectorised inner loops, is copied.
at::Tensor with_contiguous_rows(const at::Tensor& t);
RowStrides row_strides(const at::Tensor& t);

// Each returns the map geometry after checking ranks, shapes, dtypes and devices, naming the
// op and the offending argument in the error.
Geometry check_qk(const at::Tensor& q, const at::Tensor& k, const at::Tensor& rpb,
                  int64_t height, int64_t width, int64_t window);
Geometry check_qk_backward(const at::Tensor& grad_attn, const at::Tensor& q, const at::Tensor& k,
                           int64_t height, int64_t width, int64_t window);
Geometry check_av(const at::Tensor& attn, const at::Tensor& v, int64_t height, int64_t width,
                  int64_t window);
Geometry check_av_backward(const at::Tensor& grad_out, const at::Tensor& attn,
                           const at::Tensor& v, int64_t height, int64_t width, int64_t window);

// Error unless `t`'s dtype is one of `supported` on `device_name` ("CPU", "CUDA").
void check_dtype(const char* op, const at::Tensor& t, const char* device_name,
                 std::initializer_list<at::ScalarType> supported);

}  // namespace sliding_window
}  // namespace mmtransnext
