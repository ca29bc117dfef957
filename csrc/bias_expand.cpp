// Schema of the position-bias expansion op (torch.ops.mmtransnext.expand_bias*): the last, full
// size step of building TransNeXt's continuous position bias. Kernels: csrc/cpu/; fake kernels
// and autograd: mmtransnext/ops/bias_ops.py. No CUDA kernel: on GPU the PyTorch path is used.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(mmtransnext, m) {
  // out[h, y, x, a, b] = sum_s weights[x, b, s] * folded[h, y, a, rows[x, b, s]]
  m.def("expand_bias(Tensor folded, Tensor rows, Tensor weights) -> Tensor");
  // grad_folded[h, y, a, j] = sum over (x, b, s) with rows[x, b, s] == j of
  //                           weights[x, b, s] * grad[h, y, x, a, b]
  m.def("expand_bias_backward(Tensor grad, Tensor rows, Tensor weights, int columns) -> Tensor");
}
