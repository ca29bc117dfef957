"""TransNeXt's attention as an exported graph holds it: query rows in bounded chunks under one
ONNX ``Scan``, so that no tensor of a block is larger than a chunk's.

The eager path loops over row chunks in Python (:mod:`.pooled_attention`) and forms the window
part whole with compiled or unfolding ops. A graph cannot hold a Python loop when its height is
symbolic, and at a fixed size an unrolled loop would let a runtime's constant folding
precompute every chunk's position bias (it depends on weights and sizes only: gigabytes at
detection sizes). Here the loop is ``torch._higher_order_ops.scan``, which the ONNX exporter
writes as a ``Scan`` (a standard operator). The queries are cut into ``chunks x rows`` query
rows (zero rows pad the last chunk, their outputs are cut off), and each step computes the
whole attention of its rows (:func:`scan_attention`):

- the window logits against the chunk's rows of keys with a halo of ``window // 2`` rows (the
  map is zero-padded, out-of-map positions masked as :func:`.sliding_window.sliding_window_qk`
  masks them), plus the window's position bias;
- the pooled keys' logits plus their position bias, gathered for the chunk's rows from the
  column-folded CPB grid (the column taps are resolved on the grid outside the loop) in the
  logits' own layout, one run of ``Wk`` entries per (query, key row) pair and row tap, so
  that nothing is transposed in the loop;
- one softmax over both key sets, the learnable-token weights added to the window's share, and
  the output: pooled values by a matmul, window values by the same halo slices.

The window part goes one neighbour at a time (a product and a sum over the last axis each):
a stacked ``(rows*W, window**2, d)`` copy of the keys or values, and sums over its middle
axis, are what a runtime does slowest here. The window's position bias, masked outside the
map, is made per chunk outside the loop.

What depends on sizes only and is small (the row taps, the window mask) stays outside the
loop, where a runtime may fold it into a constant at a fixed size; the column-folded grid is
made per run outside the loop from a baked CPB grid passed through :func:`per_run` (folded
into constants, it would be held for every block at once: hundreds of MB at detection sizes).
At a fixed size a chunk holds about :data:`EXPORT_CHUNK_ELEMENTS` logits (the rows per chunk
follow from the map's width and the number of keys); with free sizes it is
:data:`DYNAMIC_ROWS` query rows (rows computed from symbolic sizes make the exporter's shape
reasoning run for very long).

:func:`scan_mlp` evaluates the CPB MLP over a table computed in the graph (free sizes) in
chunks of coordinates likewise, so its hidden layer is never whole.
"""
from typing import Iterator, NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

#: Logit elements (window and pooled keys) of one chunk of the exported attention (a few such
#: buffers, of 4 MB each in float32, live at once).
EXPORT_CHUNK_ELEMENTS = 1 << 20
#: Query rows per chunk of a graph with free sizes.
DYNAMIC_ROWS = 2
#: Elements of the CPB MLP's hidden layer per chunk of :func:`scan_mlp`.
EXPORT_MLP_ELEMENTS = 1 << 20


class WindowPart(NamedTuple):
    """The sliding-window keys of aggregated attention, as :func:`scan_attention` takes them.

    Attributes:
        k, v: ``(B, heads, H*W, d)`` normalised window keys and their values.
        local_bias: ``(heads, window**2)`` position bias of the window keys.
        tokens, token_bias: ``(heads, d, window**2)`` learnable tokens and ``(heads, 1,
            window**2)`` their bias (``q_norm @ tokens + token_bias`` is added to the window
            probabilities).
        window_size: odd side of the window.
    """
    k: Tensor
    v: Tensor
    local_bias: Tensor
    tokens: Tensor
    token_bias: Tensor
    window_size: int


def _halo_chunks(x: Tensor, height: int, width: int, chunks: int, rows: int,
                 radius: int) -> Tensor:
    """``(B, heads, H*W, d)`` -> ``(chunks, B, heads, rows + 2r, W + 2r, d)``: each chunk's
    rows of the zero-padded map with ``radius`` rows and columns around them."""
    batch, heads, _, dim = x.shape
    grid = x.reshape(batch, heads, height, width, dim)
    padded = chunks * rows
    grid = F.pad(grid, (0, 0, radius, radius, radius, padded - height + radius))
    index = (torch.arange(chunks, device=x.device)[:, None] * rows +
             torch.arange(rows + 2 * radius, device=x.device)[None, :]).reshape(-1)
    halo = grid.index_select(2, index)
    halo = halo.reshape(batch, heads, chunks, rows + 2 * radius, width + 2 * radius, dim)
    return halo.permute(2, 0, 1, 3, 4, 5)


def _neighbours(halo: Tensor, window_size: int) -> Iterator[Tensor]:
    """``(..., rows + 2r, W + 2r, c)`` -> the ``window**2`` tensors ``(..., rows*W, c)`` of
    the window neighbours of every position of the chunk, row-major over ``(dy, dx)``."""
    rows = halo.shape[-3] - (window_size - 1)
    width = halo.shape[-2] - (window_size - 1)
    for dy in range(window_size):
        for dx in range(window_size):
            yield halo[..., dy:dy + rows, dx:dx + width, :].flatten(-3, -2)


def scan_attention(q_scaled: Tensor, k_pool: Tensor, v_pool: Tensor, folded: Tensor,
                   rows_h: Tensor, w_h: Optional[Tensor], q_norm: Optional[Tensor] = None,
                   window: Optional[WindowPart] = None,
                   budget: int = EXPORT_CHUNK_ELEMENTS) -> Tensor:
    """Attention of ``(B, heads, H*W, d)`` queries over the pooled keys (and with ``window``
    the sliding-window keys, one softmax over both) in chunks of query rows under a scan, for
    exported graphs (see the module docstring).

    Args:
        q_scaled: the queries that attend (:func:`.cosine_attention.scaled_queries`).
        k_pool, v_pool: ``(B, heads, P, d)`` normalised pooled keys and their values.
        folded, rows_h, w_h: the column-folded position bias ``(heads, |values_h|, W, Wk)``
            and its row taps (:func:`.bias_taps.fold_grid` with ``axis='columns'``): a chunk
            gathers runs of ``Wk`` entries of it, one per (query, key row) pair and tap.
        q_norm: the normalised queries (for the learnable-token weights; with ``window``).
        window: the window keys (:class:`WindowPart`), None for attention over ``k_pool``
            only (TransNeXt's full attention).
        budget: logit elements per chunk at a fixed size: at most ``budget // (B * heads *
            W * (P + window**2)) + 1`` rows, evened out over the chunks that takes; with free
            sizes :data:`DYNAMIC_ROWS`.

    Returns:
        ``(B, heads, H*W, d)``, before the output projection.
    """
    from torch._higher_order_ops.scan import scan
    batch, heads, length, dim = q_scaled.shape
    height = rows_h.shape[0]
    width = folded.shape[2]
    num_keys = k_pool.shape[2]
    local_len = 0 if window is None else window.window_size ** 2
    radius = 0 if window is None else window.window_size // 2
    dtype = q_scaled.dtype
    if isinstance(height * width * num_keys, torch.SymInt):
        # Free sizes: a fixed number of rows. Rows computed from the symbolic sizes give
        # guard expressions whose simplification takes the exporter hours.
        rows = DYNAMIC_ROWS
    else:
        rows = budget // (batch * heads * width * (num_keys + local_len)) + 1
        # As few padding rows as that many chunks allow.
        rows = -(-height // -(-height // rows))
    chunks = (height + rows - 1) // rows
    padded = chunks * rows

    def in_chunks(t: Tensor) -> Tensor:
        """``(B, heads, H*W, c)`` -> ``(chunks, B, heads, rows*W, c)``, zero rows appended."""
        t = F.pad(t, (0, 0, 0, (padded - height) * width))
        return t.reshape(batch, heads, chunks, rows * width, t.shape[-1]).permute(2, 0, 1, 3, 4)

    # Row taps per chunk; the padding rows read the last row's (their outputs are cut off).
    row_index = torch.arange(padded, device=q_scaled.device).clamp_max(height - 1)
    taps = rows_h.shape[-1]
    # The bias is gathered as (W, Hk) rows of Wk entries of ``folded`` viewed as (heads,
    # |values_h|*W, Wk), straight in the logits' layout (rows, W, Hk, Wk): no transposition
    # in the loop. The indices are the row taps times W plus the query column.
    planes = folded.flatten(1, 2)
    columns = torch.arange(width, device=q_scaled.device)[:, None]
    xs = [in_chunks(q_scaled),
          (rows_h * width).index_select(0, row_index).reshape(chunks, rows, 1, -1, taps)]
    if w_h is not None:
        xs.append(w_h.to(dtype).index_select(0, row_index).reshape(chunks, rows, 1, -1, taps))
    if window is not None:
        size = window.window_size
        inside = torch.ones(1, 1, length, 1, dtype=dtype, device=q_scaled.device)
        inside = _halo_chunks(inside, height, width, chunks, rows, radius)[:, 0]
        # The window's position bias with its out-of-map positions masked, per chunk
        # (chunks, heads, rows*W, window**2): one addition in the loop.
        outside = torch.cat(list(_neighbours(inside, size)), dim=-1) == 0
        local_bias = window.local_bias[None, :, None].to(dtype).masked_fill(
            outside, float('-inf'))
        # The pooled values after window**2 zero rows: the output's pooled share is one matmul
        # of all probabilities, no copy of their pooled columns.
        v_padded = F.pad(v_pool, (0, 0, local_len, 0))
        xs += [in_chunks(q_norm), _halo_chunks(window.k, height, width, chunks, rows, radius),
               _halo_chunks(window.v, height, width, chunks, rows, radius), local_bias]

    # The step reads sizes from its own inputs only: the scan's body cannot close over
    # symbolic sizes of the enclosing graph.
    def step(carry: Tensor, inputs):
        q_c, rh_c = inputs[0], inputs[1]
        wh_c = inputs[2] if w_h is not None else None
        bias = None
        for t in range(taps):
            index = (rh_c[..., t] + columns).reshape(-1)
            term = planes.index_select(1, index).unflatten(1, (rh_c.shape[0], -1, rh_c.shape[2]))
            if wh_c is not None:  # (heads, rows, W, Hk, Wk) by (rows, 1, Hk, 1)
                term = term * wh_c[..., t].unsqueeze(-1)
            bias = term if bias is None else bias + term
        logits = q_c @ k_pool.transpose(-2, -1) + bias.reshape(heads, q_c.shape[2], -1)
        if window is None:
            return carry.clone(), torch.softmax(logits, dim=-1) @ v_pool
        qn_c, k_halo, v_halo, bias_c = inputs[-4:]
        local = torch.cat([(q_c * k_j).sum(-1, keepdim=True)
                           for k_j in _neighbours(k_halo, size)], dim=-1) + bias_c
        probs = torch.softmax(torch.cat([local, logits], dim=-1), dim=-1)
        local_weights = probs[..., :size * size] + qn_c @ window.tokens + window.token_bias
        out = probs @ v_padded
        for j, v_j in enumerate(_neighbours(v_halo, size)):
            out = out + local_weights[..., j:j + 1] * v_j
        return carry.clone(), out

    _, out = scan(step, torch.zeros(1, device=q_scaled.device), xs)
    out = out.permute(1, 2, 0, 3, 4).reshape(batch, heads, padded * width, dim)
    return out[:, :, :length]


def per_run(t: Tensor) -> Tensor:
    """``t`` copied through a one-step ``Scan``: what a graph computes from the copy is computed
    on every run, never folded into a constant by a runtime (onnxruntime's constant folding
    does not evaluate ``Scan`` nodes). For small constants whose products are large: at a fixed
    size TransNeXt's baked CPB grids are a few MB, their column-folded forms hundreds of MB over
    all blocks at detection sizes, which folding would hold at once."""
    from torch._higher_order_ops.scan import scan

    def step(carry: Tensor, part: Tensor):
        return carry.clone(), part.clone()

    _, out = scan(step, torch.zeros(1, device=t.device), t[None])
    return out[0]


def scan_mlp(coords: Tensor, weight1: Tensor, bias1: Tensor, weight2: Tensor, bias2: Tensor,
             budget: int = EXPORT_MLP_ELEMENTS) -> Tensor:
    """``fc2(relu(fc1(coords)))`` of ``(T, 2)`` coordinates as a ``(heads, T)`` grid, in
    chunks of ``budget // hidden`` coordinates under a scan (for a table computed in an
    exported graph, whose ``T`` is symbolic)."""
    from torch._higher_order_ops.scan import scan
    length = coords.shape[0]
    step_len = max(1, budget // weight1.shape[0])
    chunks = (length + step_len - 1) // step_len
    padded = F.pad(coords, (0, 0, 0, chunks * step_len - length))

    def step(carry: Tensor, part: Tensor):
        hidden = torch.relu(F.linear(part, weight1, bias1))
        return carry.clone(), F.linear(hidden, weight2, bias2).t()

    _, grid = scan(step, torch.zeros(1, device=coords.device),
                   padded.reshape(chunks, step_len, coords.shape[1]))
    return grid.permute(1, 0, 2).reshape(weight2.shape[0], chunks * step_len)[:, :length]
