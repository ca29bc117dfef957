// Schemas of the sliding-window ops (torch.ops.mmtransnext.*) and their argument checks. The
// kernels are registered per device in csrc/cpu/ and csrc/cuda/; the fake (meta) kernels and
// autograd formulas in Python (mmtransnext/ops/window_ops.py).
#include <Python.h>

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <torch/library.h>
#include <torch/version.h>

#include <sstream>
#include <string>

#include "sliding_window_checks.h"

namespace mmtransnext {
namespace sliding_window {

at::Tensor with_contiguous_rows(const at::Tensor& t) {
  return (t.size(-1) <= 1 || t.stride(-1) == 1) ? t : t.contiguous();
}

RowStrides row_strides(const at::Tensor& t) {
  return {t.stride(0), t.stride(1), t.stride(2)};
}

void check_dtype(const char* op, const at::Tensor& t, const char* device_name,
                 std::initializer_list<at::ScalarType> supported) {
  for (const auto dtype : supported) {
    if (t.scalar_type() == dtype) return;
  }
  std::ostringstream names;
  for (const auto dtype : supported) names << " " << c10::toString(dtype);
  TORCH_CHECK(false, op, ": dtype ", t.scalar_type(), " is not supported on ", device_name,
              " (supported:", names.str(), ")");
}

namespace {

Geometry check_geometry(const char* op, int64_t height, int64_t width, int64_t window) {
  TORCH_CHECK(window >= 1 && window % 2 == 1, op, ": window must be a positive odd number, got ",
              window);
  TORCH_CHECK(height >= 1 && width >= 1, op, ": the map size must be positive, got ", height,
              "x", width);
  return {height, width, static_cast<int>(window)};
}

// A floating-point (B, heads, H*W, C) tensor for this map.
void check_rows(const char* op, const char* name, const at::Tensor& t, const Geometry& g) {
  TORCH_CHECK(t.dim() == 4, op, ": ", name, " must be 4-D (batch, heads, H*W, channels), got ",
              t.dim(), "-D of shape ", t.sizes());
  TORCH_CHECK(t.size(2) == g.length(), op, ": ", name, " has ", t.size(2),
              " rows but the map is ", g.height, "x", g.width, " = ", g.length());
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), op, ": ", name,
              " must be a floating-point tensor, got ", t.scalar_type());
}

void check_same(const char* op, const char* name, const at::Tensor& t, const char* ref_name,
                const at::Tensor& ref, bool same_shape) {
  TORCH_CHECK(t.device() == ref.device(), op, ": ", name, " is on ", t.device(), " but ",
              ref_name, " is on ", ref.device());
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), op, ": ", name, " is ", t.scalar_type(),
              " but ", ref_name, " is ", ref.scalar_type());
  if (same_shape) {
    TORCH_CHECK(t.sizes() == ref.sizes(), op, ": ", name, " has shape ", t.sizes(), " but ",
                ref_name, " has shape ", ref.sizes());
  }
}

// (B, heads, H*W, window**2) attention logits/weights for rows shaped like `rows`.
void check_weights(const char* op, const char* name, const at::Tensor& t, const char* rows_name,
                   const at::Tensor& rows, const Geometry& g) {
  check_rows(op, name, t, g);
  check_same(op, name, t, rows_name, rows, false);
  TORCH_CHECK(t.size(0) == rows.size(0) && t.size(1) == rows.size(1) &&
                  t.size(3) == g.positions(),
              op, ": ", name, " must have shape (", rows.size(0), ", ", rows.size(1), ", ",
              g.length(), ", ", g.positions(), ") for ", rows_name, " of shape ", rows.sizes(),
              " and window ", g.window, ", got ", t.sizes());
}

}  // namespace

Geometry check_qk(const at::Tensor& q, const at::Tensor& k, const at::Tensor& rpb,
                  int64_t height, int64_t width, int64_t window) {
  const char* op = "sliding_window_qk";
  const Geometry g = check_geometry(op, height, width, window);
  check_rows(op, "q", q, g);
  check_same(op, "k", k, "q", q, true);
  TORCH_CHECK(rpb.dim() == 2 && rpb.size(0) == q.size(1) && rpb.size(1) == g.positions(), op,
              ": rpb must have shape (heads, window**2) = (", q.size(1), ", ", g.positions(),
              "), got ", rpb.sizes());
  check_same(op, "rpb", rpb, "q", q, false);
  return g;
}

Geometry check_qk_backward(const at::Tensor& grad_attn, const at::Tensor& q, const at::Tensor& k,
                           int64_t height, int64_t width, int64_t window) {
  const char* op = "sliding_window_qk_backward";
  const Geometry g = check_geometry(op, height, width, window);
  check_rows(op, "q", q, g);
  check_same(op, "k", k, "q", q, true);
  check_weights(op, "grad_attn", grad_attn, "q", q, g);
  return g;
}

Geometry check_av(const at::Tensor& attn, const at::Tensor& v, int64_t height, int64_t width,
                  int64_t window) {
  const char* op = "sliding_window_av";
  const Geometry g = check_geometry(op, height, width, window);
  check_rows(op, "v", v, g);
  check_weights(op, "attn", attn, "v", v, g);
  return g;
}

Geometry check_av_backward(const at::Tensor& grad_out, const at::Tensor& attn,
                           const at::Tensor& v, int64_t height, int64_t width, int64_t window) {
  const char* op = "sliding_window_av_backward";
  const Geometry g = check_geometry(op, height, width, window);
  check_rows(op, "v", v, g);
  check_same(op, "grad_out", grad_out, "v", v, true);
  check_weights(op, "attn", attn, "v", v, g);
  return g;
}

}  // namespace sliding_window
}  // namespace mmtransnext

// The namespace's one TORCH_LIBRARY block; other op families add their schemas with
// TORCH_LIBRARY_FRAGMENT(mmtransnext, m) in their own file.
TORCH_LIBRARY(mmtransnext, m) {
  // Loading the library without the Python package (torch.ops.load_library) still finds the
  // fake kernels and autograd formulas there. Torch before 2.4 has no such API (nor
  // torch.library.register_fake): the package registers the autograd formulas when it loads
  // the library (mmtransnext/utils/compat.py).
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4)
  m.set_python_module("mmtransnext.ops.window_ops");
#endif
  m.def("sliding_window_qk(Tensor q, Tensor k, Tensor rpb, int height, int width, int window)"
        " -> Tensor");
  m.def("sliding_window_qk_backward(Tensor grad_attn, Tensor q, Tensor k, int height, int width,"
        " int window) -> (Tensor grad_q, Tensor grad_k, Tensor grad_rpb)");
  m.def("sliding_window_av(Tensor attn, Tensor v, int height, int width, int window) -> Tensor");
  m.def("sliding_window_av_backward(Tensor grad_out, Tensor attn, Tensor v, int height,"
        " int width, int window) -> (Tensor grad_attn, Tensor grad_v)");
}

// Importing the built module (`import mmtransnext._ext`) loads the library and thereby registers
// the ops; the module itself is empty. No pybind11: it would only add compile time.
#ifdef TORCH_EXTENSION_NAME
#define SW_CONCAT_(a, b) a##b
#define SW_CONCAT(a, b) SW_CONCAT_(a, b)
#define SW_STRINGIFY_(x) #x
#define SW_STRINGIFY(x) SW_STRINGIFY_(x)

PyMODINIT_FUNC SW_CONCAT(PyInit_, TORCH_EXTENSION_NAME)(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, SW_STRINGIFY(TORCH_EXTENSION_NAME),
                               "Compiled sliding-window ops of mmtransnext (torch.ops.mmtransnext)",
                               -1, nullptr};
  return PyModule_Create(&module);
}
#endif
