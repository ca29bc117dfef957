"""Pooled-key attention as an exported graph holds it: query rows in bounded chunks under one
ONNX ``Scan``, so that neither the ``(heads, N, P)`` logits nor the position bias is ever whole.

The eager path (:mod:`.pooled_attention`) loops over row chunks in Python; a graph cannot hold
such a loop when its height is symbolic, and at a fixed size an unrolled loop would let a
runtime's constant folding precompute every chunk's position bias (they depend on weights and
sizes only: gigabytes at detection sizes). Here the loop is ``torch._higher_order_ops.scan``,
which the ONNX exporter writes as a ``Scan`` (a standard operator): the queries are cut into
``chunks x rows`` query rows (zero rows pad the last chunk), and each step

- gathers its rows of the row-folded CPB grid ``(heads, H, Hk, columns)`` and expands them to
  the chunk's ``(heads, rows*W, Hk*Wk)`` bias with the column taps (one ``Gather`` per tap, the
  indices built once outside the loop, as :func:`.bias_ops.expand_columns_torch` does);
- computes the logits, merges their log-sum-exp with the window keys' one (``extra_lse``) and
  returns the pooled keys' output and the window keys' share of the joint softmax.

What depends on weights and sizes only (the folded grid) stays outside the loop, where a
runtime may fold it into a constant at a fixed size. The chunk holds about
:data:`EXPORT_CHUNK_ELEMENTS` logits whatever the input size (the rows per chunk are computed
in the graph from the map's width and the number of keys).
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

#: Logit elements of one chunk of the exported pooled attention (a few such buffers, of 4 MB
#: each in float32, live at once).
EXPORT_CHUNK_ELEMENTS = 1 << 20


def _column_indices(rows_w: Tensor, weights: Optional[Tensor], kh: int,
                    columns: int) -> Tuple[list, list]:
    """Per tap: the flat ``(W*Hk*Wk)`` index into a ``(Hk*columns)`` row of the folded grid and
    the flat ``(W*Hk*Wk)`` weight (None for one tap of weight 1)."""
    width, kw, taps = rows_w.shape
    offsets = (torch.arange(kh, device=rows_w.device) * columns)[None, :, None]
    indices, tap_weights = [], []
    for t in range(taps):
        indices.append((offsets + rows_w[:, None, :, t]).reshape(-1))
        tap_weights.append(None if weights is None else
                           weights[:, None, :, t].expand(width, kh, kw).reshape(-1))
    return indices, tap_weights


def scan_pooled_attention(q: Tensor, k: Tensor, v: Tensor, folded: Tensor, rows_w: Tensor,
                          w_w: Optional[Tensor], extra_lse: Optional[Tensor] = None,
                          budget: int = EXPORT_CHUNK_ELEMENTS
                          ) -> Tuple[Tensor, Optional[Tensor]]:
    """:func:`.pooled_attention.pooled_attention` (same arguments and results) in chunks of
    query rows under a scan, for exported graphs (see the module docstring).

    Args:
        budget: logit elements per chunk: the rows per chunk are ``budget // (B * heads * W *
            P) + 1``, computed in the graph from the (possibly symbolic) sizes.
    """
    from torch._higher_order_ops.scan import scan
    batch, heads, length, dim = q.shape
    height, kh, columns = folded.shape[1], folded.shape[2], folded.shape[3]
    width, kw = rows_w.shape[0], rows_w.shape[1]
    num_keys = k.shape[2]
    dtype = torch.promote_types(torch.promote_types(q.dtype, k.dtype), v.dtype)
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    rows = budget // (batch * heads * width * num_keys) + 1
    chunks = (height + rows - 1) // rows
    padded = chunks * rows

    def in_chunks(t: Tensor) -> Tensor:
        """``(B, heads, H*W, c)`` -> ``(chunks, B, heads, rows*W, c)``, zero rows appended."""
        t = F.pad(t, (0, 0, 0, (padded - height) * width))
        return t.reshape(batch, heads, chunks, rows * width, t.shape[-1]).permute(2, 0, 1, 3, 4)

    # Rows of the folded grid per chunk; the padding rows read the last row (their outputs are
    # cut off below).
    row_index = torch.arange(padded, device=q.device).clamp_max(height - 1).reshape(chunks, rows)
    indices, tap_weights = _column_indices(rows_w, None if w_w is None else w_w.to(dtype), kh,
                                           columns)
    key_t = k.transpose(-2, -1)
    xs = [in_chunks(q), row_index]
    if extra_lse is not None:
        xs.append(in_chunks(extra_lse.float()))

    # The step reads sizes from its own inputs only: the scan's body cannot close over
    # symbolic sizes of the enclosing graph.
    def step(carry: Tensor, inputs):
        q_c, y_c = inputs[0], inputs[1]
        part = folded.index_select(1, y_c).to(dtype).flatten(2).flatten(0, 1)
        bias = None
        for index, weight in zip(indices, tap_weights):
            term = part.index_select(1, index)  # (heads * rows, W * Hk * Wk)
            if weight is not None:
                term = term * weight
            bias = term if bias is None else bias + term
        logits = (q_c @ key_t + bias.reshape(q_c.shape[1], q_c.shape[2], -1)).float()
        lse = torch.logsumexp(logits, dim=-1, keepdim=True)
        if extra_lse is None:
            probs, mass = torch.exp(logits - lse), torch.zeros_like(lse)
        else:
            total = torch.logaddexp(lse, inputs[2])
            probs, mass = torch.exp(logits - total), torch.exp(inputs[2] - total)
        return carry.clone(), (probs.to(dtype) @ v, mass)

    _, (out, mass) = scan(step, torch.zeros(1, device=q.device), xs)

    def joined(t: Tensor) -> Tensor:
        """``(chunks, B, heads, rows*W, c)`` -> ``(B, heads, H*W, c)``."""
        t = t.permute(1, 2, 0, 3, 4).reshape(batch, heads, padded * width, t.shape[-1])
        return t[:, :, :length]

    return joined(out), (joined(mass) if extra_lse is not None else None)
