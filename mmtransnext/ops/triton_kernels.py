"""Triton kernels of TransNeXt attention: sliding-window keys plus pooled keys under one softmax.

Imported lazily (by :mod:`.triton_attention`) because ``@triton.jit`` reads ``TRITON_INTERPRET``
when it decorates: set that variable before the first call to run these kernels on CPU tensors.

Per ``(batch, head)`` and tile of ``BLOCK_M`` queries of an ``height x width`` map:

- window keys: ``WINDOW**2`` neighbours gathered one offset at a time (elementwise products, no
  ``tl.dot``: 9 keys are too few for a matrix unit), plus the local bias ``rpb[head, l]``,
  out-of-map neighbours masked;
- pooled keys: ``BLOCK_N`` keys at a time with ``tl.dot``, plus the continuous position bias
  gathered from the folded CPB grid (one axis's taps already applied on the small grid in
  PyTorch by :func:`.bias_taps.fold_grid`, the axis with more
  taps) and the other axis's taps (:func:`_cpb_bias`): for query ``(yq, xq)`` and key ``(yk,
  xk)``, with the rows folded, ``folded (heads, H, Hk, |values_w|)``, it is ``sum_t
  wt[xq,xk,t] folded[head, yq, yk, rt[xq,xk,t]]``; with the columns folded (``transposed``),
  ``folded (heads, |values_h|, W, Wk)``, ``sum_t wt[yq,yk,t] folded[head, rt[yq,yk,t], xq,
  xk]``: one gather per tap (one tap of weight 1, ``weighted`` 0, in extrapolation mode; up to
  four, two query by two key positions, with bilinear resizing);
- one online softmax over both key sets (fp32 running max and sum); the learnable-token weights
  ``tok[b, head, n, l]`` are added to the window probabilities (they are not normalised).

The queries come in normalised (``q_norm``); each kernel scales the tiles it loads, ``(q_norm +
qe[head]) * hs[head] * qs[n]`` (query embedding, ``softplus(temperature)``, length scale), in
float32 registers (:func:`_queries`), so the scaled queries are never stored.

``WINDOW == 0`` gives full attention (stage 4): pooled keys are then all tokens.
The forward writes the output and the log-sum-exp. Backward recomputes the logits
(FlashAttention-2 style): :func:`_attention_bwd_query` per query tile of two batch items
(``dq`` of the scaled queries, ``dtok``, ``delta = dO . O_softmax``, and ``dfolded`` by atomic
adds, the bias gathered and its gradient added once for both items), then
:func:`_attention_bwd_keys` per tile of pooled keys and run of query tiles (their ``dk``/``dv``,
float32 partial sums added up in PyTorch) and per tile of window keys (their ``dk``/``dv``
gathered from the queries whose windows hold them, and ``drpb``): no ``dk``/``dv`` atomics.
"""
import triton
import triton.language as tl

from .triton_configs import MAX_TAPS_PER_PAIR

#: Arguments no kernel specialises on (``do_not_specialize``; names absent from a kernel are
#: ignored): the sizes, every stride, ``transposed`` (which axis is folded) and ``weighted``
#: (whether the taps have weights: in interpolation mode not at the sizes whose unfolded axis
#: matches the table's). Triton otherwise
#: compiles a variant per value class (equal to 1, divisible by 16) of each, i.e. several per
#: stage and input size in a multi-scale schedule. Row alignment, what vectorised row loads
#: need, comes from the constexpr ``ALIGN`` instead: the strides of the row tensors (queries,
#: keys, values, output and its gradient) are passed in units of ``ALIGN`` elements
#: (:func:`_slice`, :func:`_tile`), so the compiler knows every row starts on an ``ALIGN``-element
#: boundary whatever the size. (Before, the row strides were specialised on divisibility by
#: 16, but the unspecialised batch and head strides had already taken every base's alignment:
#: rows loaded 2 bytes at a time.)
UNSPECIALISED = ('batch', 'heads', 'height', 'width', 'num_keys', 'key_h', 'key_w', 'fold_n',
                 'taps', 'transposed', 'splits', 'pooled_programs', 'weighted',
                 *(f's{t}_{axis}' for t in ('q', 'k', 'v', 't', 'kp', 'vp', 'o', 'do')
                   for axis in 'bhn'))


@triton.jit
def _bias_offsets(h, offs_m, offs_n, height, width, key_h, key_w, fold_n, transposed):
    """Per (query, pooled key) pair: where its entries start in the folded grid (flat), the
    step between its table values there, and its pair of the other axis in the taps' flat
    layout. Rows folded (``transposed`` 0): ``folded[h, yq, yk, :]`` (step 1), taps of ``(xq,
    xk)``; columns folded (1): ``folded[h, :, xq, xk]`` (step ``W * W'``), taps of ``(yq,
    yk)``: the pairs of a tile, whose queries and keys mostly share their rows, read
    neighbouring entries either way. A runtime branch, uniform over the launch: no variant per
    folded axis."""
    yq, xq = offs_m // width, offs_m % width
    yk, xk = offs_n // key_w, offs_n % key_w
    if transposed != 0:
        row = ((h * fold_n * width + xq) * key_w)[:, None] + xk[None, :]
        pair = (yq * key_h)[:, None] + yk[None, :]
    else:
        row = ((h * height + yq) * key_h * fold_n)[:, None] + (yk * fold_n)[None, :]
        pair = (xq * key_w)[:, None] + xk[None, :]
    return row, tl.where(transposed != 0, width * key_w, 1), pair


#: Most taps of the unfolded axis per (query, pooled key) pair (checked by the op). The tap
#: loops run this many times, unrolled, the taps past ``taps`` masked off: a runtime loop
#: nested in the key loops kept Triton's software pipeliner off them (it pipelines innermost
#: loops only), i.e. no ``cp.async`` prefetch of the next key tile.
MAX_TAPS = tl.constexpr(MAX_TAPS_PER_PAIR)


@triton.jit
def _tap(RT, WT, pair, t, mask, taps, weighted):
    """Table value (index along the folded grid's value axis) and weight of tap ``t`` of every
    (query, pooled key) pair (weight 0 and no load where ``t >= taps``)."""
    mask = mask & (t < taps)
    value = tl.load(RT + pair * taps + t, mask=mask, other=0).to(tl.int32)
    if weighted != 0:  # a runtime branch, uniform over the launch: no variant per bias mode
        weight = tl.load(WT + pair * taps + t, mask=mask, other=0.)
    else:  # one tap of weight 1
        weight = mask.to(tl.float32)
    return value, weight, mask


@triton.jit
def _cpb_bias(FOLD, RT, WT, h, offs_m, offs_n, mask, height, width, key_h, key_w, fold_n,
              taps, transposed, weighted, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """``(BLOCK_M, BLOCK_N)`` float32 position bias, one gather per tap of the unfolded axis
    (see :func:`_bias_offsets`): ``sum_t wt[xq, xk, t] * folded[h, yq, yk, rt[xq, xk, t]]``
    with the rows folded, ``sum_t wt[yq, yk, t] * folded[h, rt[yq, yk, t], xq, xk]`` with the
    columns folded. The tap loop is unrolled to :data:`MAX_TAPS` (masked), so that a key loop
    around it can be pipelined."""
    row, step, pair = _bias_offsets(h, offs_m, offs_n, height, width, key_h, key_w, fold_n,
                                    transposed)
    bias = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for t in tl.static_range(MAX_TAPS):
        value, weight, tap_mask = _tap(RT, WT, pair, t, mask, taps, weighted)
        bias += weight * tl.load(FOLD + row + value * step, mask=tap_mask, other=0.)
    return bias


@triton.jit
def _cpb_bias_grad(DFOLD, RT, WT, h, offs_m, offs_n, mask, grad, height, width, key_h, key_w,
                   fold_n, taps, transposed, weighted):
    """Scatter-add the bias gradient ``grad (BLOCK_M, BLOCK_N)`` into the float32 gradient of
    the folded grid: one relaxed atomic add per tap of the unfolded axis (unrolled as in
    :func:`_cpb_bias`)."""
    row, step, pair = _bias_offsets(h, offs_m, offs_n, height, width, key_h, key_w, fold_n,
                                    transposed)
    for t in tl.static_range(MAX_TAPS):
        value, weight, tap_mask = _tap(RT, WT, pair, t, mask, taps, weighted)
        tl.atomic_add(DFOLD + row + value * step, grad * weight, mask=tap_mask, sem='relaxed')


@triton.jit
def _slice(ptr, b, h, s_b, s_h, ALIGN: tl.constexpr):
    """Pointer to the ``(batch b, head h)`` slice of a tensor whose strides are given in units
    of ``ALIGN`` elements (see :data:`UNSPECIALISED`): an int64 offset, so that tensors of 2**31
    elements or more do not wrap (the offsets within a slice stay int32)."""
    return ptr + b.to(tl.int64) * s_b * ALIGN + h.to(tl.int64) * s_h * ALIGN


@triton.jit
def _tile(base, s_n, offs, offs_d, mask, ALIGN: tl.constexpr):
    """Rows ``offs`` of a ``(batch, head)`` slice (see :func:`_slice`) with unit stride along
    d, ``s_n`` in units of ``ALIGN`` elements: the product by the constexpr tells the compiler
    every row starts ``ALIGN * itemsize`` bytes aligned (up to 16: one 128-bit load per vector
    of a row)."""
    return tl.load(base + offs[:, None] * s_n * ALIGN + offs_d[None, :], mask=mask, other=0.)


@triton.jit
def _queries(q_base, QE, HS, QS, h, sq_n, offs, offs_d, mask_m, mask_d,
             HEAD_DIM: tl.constexpr, ALIGN: tl.constexpr):
    """A tile of normalised queries plus the query embedding, ``q_norm + qe[h]``, in float32,
    and each query's factor ``f = hs[h] * qs[n]`` (the scaled queries are their product; the
    callers round it to the input dtype for ``tl.dot``, as the queries were rounded when scaled
    in PyTorch)."""
    q = _tile(q_base, sq_n, offs, offs_d, mask_m[:, None] & mask_d[None, :], ALIGN)
    q = q.to(tl.float32) + tl.load(QE + h * HEAD_DIM + offs_d, mask=mask_d, other=0.)[None, :]
    return q, tl.load(HS + h) * tl.load(QS + offs, mask=mask_m, other=0.)


@triton.jit
def _program(pid, heads, extent, BLOCK: tl.constexpr, BLOCK_D: tl.constexpr,
             HEAD_DIM: tl.constexpr):
    """Program ``pid``'s ``batch * heads + head`` (int64), batch, head, tile offsets (along an
    axis of ``extent``) and head-dim offsets, with their masks. Programs lie on grid axis 0
    only (no 65535 limit at any batch), tiles fastest: ``pid = bh * tiles + tile``, so the
    programs of one head run together."""
    tiles = tl.cdiv(extent, BLOCK)
    bh = pid // tiles
    offs = (pid - bh * tiles) * BLOCK + tl.arange(0, BLOCK)
    offs_d = tl.arange(0, BLOCK_D)
    return bh.to(tl.int64), bh // heads, bh % heads, offs, offs < extent, offs_d, \
        offs_d < HEAD_DIM


@triton.jit
def _pooled_probs(q, k_tile, lse, FOLD, RT, WT, h, offs_m, offs_n, mask_mn, height, width,
                  key_h, key_w, fold_n, taps, transposed, weighted, BLOCK_M: tl.constexpr,
                  BLOCK_N: tl.constexpr, PRECISION: tl.constexpr):
    """Recomputed softmax probabilities of a (query tile, pooled-key tile) pair (backward)."""
    scores = tl.dot(q, tl.trans(k_tile), input_precision=PRECISION)
    scores += _cpb_bias(FOLD, RT, WT, h, offs_m, offs_n, mask_mn, height, width, key_h, key_w,
                        fold_n, taps, transposed, weighted, BLOCK_M, BLOCK_N)
    return tl.where(mask_mn, tl.exp(scores - lse[:, None]), 0.)


@triton.jit
def _neighbour(offs_m, mask_m, height, width, l, WINDOW: tl.constexpr):
    """Flat index of window position ``l`` (row-major over (dy, dx)) of each query, and whether
    it lies inside the map."""
    y = offs_m // width + (l // WINDOW - WINDOW // 2)
    x = offs_m % width + (l % WINDOW - WINDOW // 2)
    inside = mask_m & (y >= 0) & (y < height) & (x >= 0) & (x < width)
    return y * width + x, inside


@triton.jit(do_not_specialize=UNSPECIALISED)
def _attention_fwd(Q, QE, HS, QS, K, V, TOK, RPB, KP, VP, FOLD, RT, WT, OUT, LSE,
                   sq_b, sq_h, sq_n, sk_b, sk_h, sk_n, sv_b, sv_h, sv_n, st_b, st_h, st_n,
                   skp_b, skp_h, skp_n, svp_b, svp_h, svp_n, so_b, so_h, so_n,
                   heads, height, width, num_keys, key_h, key_w, fold_n, taps, transposed,
                   HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
                   BLOCK_N: tl.constexpr, WINDOW: tl.constexpr, weighted,
                   PRECISION: tl.constexpr, ALIGN: tl.constexpr):
    length = height * width
    bh, b, h, offs_m, mask_m, offs_d, mask_d = _program(tl.program_id(0), heads, length, BLOCK_M,
                                                        BLOCK_D, HEAD_DIM)
    k_base, v_base = _slice(K, b, h, sk_b, sk_h, ALIGN), _slice(V, b, h, sv_b, sv_h, ALIGN)
    tok_base = _slice(TOK, b, h, st_b, st_h, 1)
    kp_base, vp_base = _slice(KP, b, h, skp_b, skp_h, ALIGN), _slice(VP, b, h, svp_b, svp_h, ALIGN)
    qf, f = _queries(_slice(Q, b, h, sq_b, sq_h, ALIGN), QE, HS, QS, h, sq_n, offs_m, offs_d,
                     mask_m, mask_d, HEAD_DIM, ALIGN)
    qf = qf * f[:, None]
    q = qf.to(Q.dtype.element_ty)
    m_i = tl.full([BLOCK_M], -1e30, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    acc_tok = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    if WINDOW > 0:
        for l in range(WINDOW * WINDOW):
            nb, inside = _neighbour(offs_m, mask_m, height, width, l, WINDOW)
            mask_nd = inside[:, None] & mask_d[None, :]
            key = _tile(k_base, sk_n, nb, offs_d, mask_nd, ALIGN).to(tl.float32)
            s = tl.sum(qf * key, 1) + tl.load(RPB + h * WINDOW * WINDOW + l).to(tl.float32)
            s = tl.where(inside, s, float('-inf'))
            m_new = tl.maximum(m_i, s)
            alpha = tl.exp(m_i - m_new)
            p = tl.exp(s - m_new)
            value = _tile(v_base, sv_n, nb, offs_d, mask_nd, ALIGN).to(tl.float32)
            acc = acc * alpha[:, None] + p[:, None] * value
            l_i = l_i * alpha + p
            m_i = m_new
            tok = tl.load(tok_base + offs_m * st_n + l, mask=mask_m, other=0.).to(tl.float32)
            acc_tok += tok[:, None] * value
    for start in range(0, num_keys, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        mask_n = offs_n < num_keys
        mask_kd = mask_n[:, None] & mask_d[None, :]
        k_tile = _tile(kp_base, skp_n, offs_n, offs_d, mask_kd, ALIGN)
        scores = tl.dot(q, tl.trans(k_tile), input_precision=PRECISION)
        scores += _cpb_bias(FOLD, RT, WT, h, offs_m, offs_n, mask_m[:, None] & mask_n[None, :],
                            height, width, key_h, key_w, fold_n, taps, transposed, weighted,
                            BLOCK_M, BLOCK_N)
        scores = tl.where(mask_n[None, :], scores, float('-inf'))
        m_new = tl.maximum(m_i, tl.max(scores, 1))
        alpha = tl.exp(m_i - m_new)
        p_tile = tl.exp(scores - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p_tile, 1)
        v_tile = _tile(vp_base, svp_n, offs_n, offs_d, mask_kd, ALIGN)
        acc = acc * alpha[:, None] + tl.dot(p_tile.to(v_tile.dtype), v_tile,
                                            input_precision=PRECISION)
        m_i = m_new
    out = acc / l_i[:, None] + acc_tok
    tl.store(_slice(OUT, b, h, so_b, so_h, ALIGN) + offs_m[:, None] * so_n * ALIGN +
             offs_d[None, :],
             out.to(OUT.dtype.element_ty), mask=mask_m[:, None] & mask_d[None, :])
    tl.store(LSE + bh * length + offs_m, m_i + tl.log(l_i), mask=mask_m)


@triton.jit
def _query_item(Q, QE, HS, QS, K, V, TOK, RPB, OUT, DO, LSE, DELTA, DTOK, b, h, heads,
                sq_b, sq_h, sq_n, sk_b, sk_h, sk_n, sv_b, sv_h, sv_n, st_b, st_h, st_n,
                so_b, so_h, so_n, sdo_b, sdo_h, sdo_n, height, width, offs_m, mask_m, offs_d,
                mask_d, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
                WINDOW: tl.constexpr, ALIGN: tl.constexpr):
    """The query backward's work on one batch item ``b`` of a query tile before its pooled-key
    loop: ``delta`` (stored), ``dtok`` (stored), the window part of ``dq``. Returns the scaled
    queries and their output gradient in the input dtype, ``lse``, ``delta``, ``dq`` (float32)
    and the item's first row in the ``(B, heads, N)`` buffers (int64)."""
    length = height * width
    mask_md = mask_m[:, None] & mask_d[None, :]
    qf, f = _queries(_slice(Q, b, h, sq_b, sq_h, ALIGN), QE, HS, QS, h, sq_n, offs_m, offs_d,
                     mask_m, mask_d, HEAD_DIM, ALIGN)
    qf = qf * f[:, None]
    do = _tile(_slice(DO, b, h, sdo_b, sdo_h, ALIGN), sdo_n, offs_m, offs_d, mask_md,
               ALIGN).to(tl.float32)
    out = _tile(_slice(OUT, b, h, so_b, so_h, ALIGN), so_n, offs_m, offs_d, mask_md,
                ALIGN).to(tl.float32)
    row0 = (b.to(tl.int64) * heads + h) * length
    lse = tl.load(LSE + row0 + offs_m, mask=mask_m, other=0.)
    # delta = dO . (softmax part of the output) = dO . out - sum_l tok_l (dO . v_l).
    delta = tl.sum(do * out, 1)
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    if WINDOW > 0:
        k_base, v_base = _slice(K, b, h, sk_b, sk_h, ALIGN), _slice(V, b, h, sv_b, sv_h, ALIGN)
        tok_base = _slice(TOK, b, h, st_b, st_h, 1)
        for l in range(WINDOW * WINDOW):
            nb, inside = _neighbour(offs_m, mask_m, height, width, l, WINDOW)
            value = _tile(v_base, sv_n, nb, offs_d, inside[:, None] & mask_d[None, :], ALIGN).to(
                tl.float32)
            dp = tl.sum(do * value, 1)
            tok = tl.load(tok_base + offs_m * st_n + l, mask=mask_m, other=0.).to(tl.float32)
            delta -= tok * dp
            tl.store(DTOK + row0 * (WINDOW * WINDOW) + offs_m * (WINDOW * WINDOW) + l,
                     dp.to(DTOK.dtype.element_ty), mask=mask_m)
        for l in range(WINDOW * WINDOW):
            nb, inside = _neighbour(offs_m, mask_m, height, width, l, WINDOW)
            mask_nd = inside[:, None] & mask_d[None, :]
            key = _tile(k_base, sk_n, nb, offs_d, mask_nd, ALIGN).to(tl.float32)
            value = _tile(v_base, sv_n, nb, offs_d, mask_nd, ALIGN).to(tl.float32)
            s = tl.sum(qf * key, 1) + tl.load(RPB + h * WINDOW * WINDOW + l).to(tl.float32)
            p = tl.where(inside, tl.exp(s - lse), 0.)
            dp = tl.sum(do * value, 1)
            ds = p * (dp - delta)
            dq += ds[:, None] * key
    tl.store(DELTA + row0 + offs_m, delta, mask=mask_m)
    q = qf.to(Q.dtype.element_ty)
    return q, do.to(q.dtype), lse, delta, dq, row0


@triton.jit
def _pooled_query_step(KP, VP, b, h, skp_b, skp_h, skp_n, svp_b, svp_h, svp_n, q, do, lse,
                       delta, bias, dq, offs_n, offs_d, mask_mn, mask_kd,
                       PRECISION: tl.constexpr, ALIGN: tl.constexpr):
    """One item's share of a (query tile, pooled-key tile) step of the query backward, the
    position ``bias`` given: the logits' gradient ``ds`` and ``dq`` updated."""
    k_tile = _tile(_slice(KP, b, h, skp_b, skp_h, ALIGN), skp_n, offs_n, offs_d, mask_kd, ALIGN)
    v_tile = _tile(_slice(VP, b, h, svp_b, svp_h, ALIGN), svp_n, offs_n, offs_d, mask_kd, ALIGN)
    scores = tl.dot(q, tl.trans(k_tile), input_precision=PRECISION) + bias
    p = tl.where(mask_mn, tl.exp(scores - lse[:, None]), 0.)
    dp = tl.dot(do, tl.trans(v_tile.to(q.dtype)), input_precision=PRECISION)
    ds = p * (dp - delta[:, None])
    dq += tl.dot(ds.to(q.dtype), k_tile, input_precision=PRECISION)
    return ds, dq


@triton.jit(do_not_specialize=UNSPECIALISED)
def _attention_bwd_query(Q, QE, HS, QS, K, V, TOK, RPB, KP, VP, FOLD, RT, WT, OUT, DO, LSE,
                         DELTA, DQ, DTOK, DFOLD,
                         sq_b, sq_h, sq_n, sk_b, sk_h, sk_n, sv_b, sv_h, sv_n, st_b, st_h,
                         st_n, skp_b, skp_h, skp_n, svp_b, svp_h, svp_n, so_b, so_h, so_n,
                         sdo_b, sdo_h, sdo_n, batch,
                         heads, height, width, num_keys, key_h, key_w, fold_n, taps, transposed,
                         HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
                         BLOCK_N: tl.constexpr, WINDOW: tl.constexpr, weighted,
                         PRECISION: tl.constexpr, ALIGN: tl.constexpr):
    """Per query tile of two batch items (``2 * pair`` and the next, where the batch has it):
    ``delta`` (stored for :func:`_attention_bwd_keys`), ``dq``, ``dtok``, and the folded grid's
    gradient by float32 atomic adds. The position bias depends on the head only, so each
    (query, pooled key) pair's bias is gathered once for both items and its gradient, the two
    items' summed, added once: half the gathers and atomic adds of one item per program.
    ``DQ`` is ``(B, heads, N, d)`` contiguous float32, the gradient of the scaled queries (the
    op's backward turns it into those of ``q_norm``, ``qe`` and ``f``: computed here, the extra
    registers made ptxas spill), ``DTOK`` ``(B, heads, N, L)``. Programs: ``pid = (pair *
    heads + head) * tiles + tile``."""
    length = height * width
    group, pair, h, offs_m, mask_m, offs_d, mask_d = _program(tl.program_id(0), heads, length,
                                                             BLOCK_M, BLOCK_D, HEAD_DIM)
    b0 = pair * 2
    second = b0 + 1 < batch  # uniform: the last pair of an odd batch has one item
    q0, do0, lse0, delta0, dq0, row0 = _query_item(
        Q, QE, HS, QS, K, V, TOK, RPB, OUT, DO, LSE, DELTA, DTOK, b0, h, heads, sq_b, sq_h,
        sq_n, sk_b, sk_h, sk_n, sv_b, sv_h, sv_n, st_b, st_h, st_n, so_b, so_h, so_n, sdo_b,
        sdo_h, sdo_n, height, width, offs_m, mask_m, offs_d, mask_d, HEAD_DIM, BLOCK_D, BLOCK_M,
        WINDOW, ALIGN)
    mask_m1 = mask_m & second
    q1, do1, lse1, delta1, dq1, row1 = _query_item(
        Q, QE, HS, QS, K, V, TOK, RPB, OUT, DO, LSE, DELTA, DTOK, b0 + 1, h, heads, sq_b, sq_h,
        sq_n, sk_b, sk_h, sk_n, sv_b, sv_h, sv_n, st_b, st_h, st_n, so_b, so_h, so_n, sdo_b,
        sdo_h, sdo_n, height, width, offs_m, mask_m1, offs_d, mask_d, HEAD_DIM, BLOCK_D, BLOCK_M,
        WINDOW, ALIGN)
    # The tap loops are unrolled, so this key loop is pipelined (cp.async).
    for start in range(0, num_keys, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        mask_n = offs_n < num_keys
        mask_kd = mask_n[:, None] & mask_d[None, :]
        mask_mn = mask_m[:, None] & mask_n[None, :]
        bias = _cpb_bias(FOLD, RT, WT, h, offs_m, offs_n, mask_mn, height, width, key_h, key_w,
                         fold_n, taps, transposed, weighted, BLOCK_M, BLOCK_N)
        ds, dq0 = _pooled_query_step(KP, VP, b0, h, skp_b, skp_h, skp_n, svp_b, svp_h, svp_n,
                                     q0, do0, lse0, delta0, bias, dq0, offs_n, offs_d, mask_mn,
                                     mask_kd, PRECISION, ALIGN)
        if second:
            ds1, dq1 = _pooled_query_step(KP, VP, b0 + 1, h, skp_b, skp_h, skp_n, svp_b, svp_h,
                                          svp_n, q1, do1, lse1, delta1, bias, dq1, offs_n,
                                          offs_d, mask_mn, mask_kd, PRECISION, ALIGN)
            ds += ds1
        _cpb_bias_grad(DFOLD, RT, WT, h, offs_m, offs_n, mask_mn, ds, height, width, key_h,
                       key_w, fold_n, taps, transposed, weighted)
    at = offs_m[:, None] * HEAD_DIM + offs_d[None, :]
    mask_md = mask_m[:, None] & mask_d[None, :]
    tl.store(DQ + row0 * HEAD_DIM + at, dq0.to(DQ.dtype.element_ty), mask=mask_md)
    tl.store(DQ + row1 * HEAD_DIM + at, dq1.to(DQ.dtype.element_ty), mask=mask_md & second)


@triton.jit
def _pooled_key_grads(pid, Q, QE, HS, QS, KP, VP, FOLD, RT, WT, DO, LSE, DELTA, DKP, DVP,
                      sq_b, sq_h, sq_n, skp_b, skp_h, skp_n, svp_b, svp_h, svp_n, sdo_b,
                      sdo_h, sdo_n, heads, height, width, num_keys, key_h, key_w, fold_n, taps,
                      transposed, splits, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, weighted,
                      PRECISION: tl.constexpr, ALIGN: tl.constexpr):
    """Partial ``dk``/``dv`` of a tile of pooled keys over one of ``splits`` runs of query
    tiles. Programs: ``pid = ((batch * heads + head) * splits + split) * tiles + tile``; the
    float32 sums go to ``(B, heads, splits, P, d)`` buffers, added up by the caller."""
    length = height * width
    tiles = tl.cdiv(num_keys, BLOCK_N)
    group = pid // tiles  # (batch * heads + head) * splits + split
    offs_n = (pid - group * tiles) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < num_keys
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < HEAD_DIM
    bh = group // splits
    b, h = bh // heads, bh % heads
    run = tl.cdiv(tl.cdiv(length, BLOCK_M), splits) * BLOCK_M
    first = (group - bh * splits) * run
    last = tl.minimum(first + run, length)
    mask_kd = mask_n[:, None] & mask_d[None, :]
    key = _tile(_slice(KP, b, h, skp_b, skp_h, ALIGN), skp_n, offs_n, offs_d, mask_kd, ALIGN)
    value = _tile(_slice(VP, b, h, svp_b, svp_h, ALIGN), svp_n, offs_n, offs_d, mask_kd, ALIGN)
    q_base, do_base = _slice(Q, b, h, sq_b, sq_h, ALIGN), _slice(DO, b, h, sdo_b, sdo_h, ALIGN)
    row0 = bh.to(tl.int64) * length
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    for start in range(first, last, BLOCK_M):
        offs_m = start + tl.arange(0, BLOCK_M)
        mask_m = offs_m < length
        mask_md = mask_m[:, None] & mask_d[None, :]
        mask_mn = mask_m[:, None] & mask_n[None, :]
        q, f = _queries(q_base, QE, HS, QS, h, sq_n, offs_m, offs_d, mask_m, mask_d,
                        HEAD_DIM, ALIGN)
        q = (q * f[:, None]).to(Q.dtype.element_ty)
        do = _tile(do_base, sdo_n, offs_m, offs_d, mask_md, ALIGN).to(q.dtype)
        lse = tl.load(LSE + row0 + offs_m, mask=mask_m, other=0.)
        delta = tl.load(DELTA + row0 + offs_m, mask=mask_m, other=0.)
        p = _pooled_probs(q, key, lse, FOLD, RT, WT, h, offs_m, offs_n, mask_mn, height, width,
                          key_h, key_w, fold_n, taps, transposed, weighted, BLOCK_M, BLOCK_N,
                          PRECISION)
        dv += tl.dot(tl.trans(p.to(q.dtype)), do, input_precision=PRECISION)
        dp = tl.dot(do, tl.trans(value.to(q.dtype)), input_precision=PRECISION)
        ds = p * (dp - delta[:, None])
        dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=PRECISION)
    grad_at = group.to(tl.int64) * num_keys * HEAD_DIM + offs_n[:, None] * HEAD_DIM + \
        offs_d[None, :]
    tl.store(DKP + grad_at, dk, mask=mask_kd)
    tl.store(DVP + grad_at, dv, mask=mask_kd)


@triton.jit
def _window_key_grads(pid, Q, QE, HS, QS, K, V, TOK, RPB, DO, LSE, DELTA, DK, DV, DRPB,
                      sq_b, sq_h, sq_n, sk_b, sk_h, sk_n, sv_b, sv_h, sv_n, st_b, st_h,
                      st_n, sdo_b, sdo_h, sdo_n, heads, height, width, HEAD_DIM: tl.constexpr,
                      BLOCK_D: tl.constexpr, BLOCK: tl.constexpr, WINDOW: tl.constexpr,
                      ALIGN: tl.constexpr):
    """``dk``/``dv`` of a tile of window keys, gathered from the ``WINDOW**2`` queries whose
    windows hold each key (no atomics: each key's gradient is written once), and its share of
    ``drpb`` (one relaxed atomic add per window position)."""
    length = height * width
    bh, b, h, offs_n, mask_n, offs_d, mask_d = _program(pid, heads, length, BLOCK, BLOCK_D,
                                                        HEAD_DIM)
    mask_nd = mask_n[:, None] & mask_d[None, :]
    key = _tile(_slice(K, b, h, sk_b, sk_h, ALIGN), sk_n, offs_n, offs_d, mask_nd,
                ALIGN).to(tl.float32)
    value = _tile(_slice(V, b, h, sv_b, sv_h, ALIGN), sv_n, offs_n, offs_d, mask_nd,
                  ALIGN).to(tl.float32)
    q_base, do_base = _slice(Q, b, h, sq_b, sq_h, ALIGN), _slice(DO, b, h, sdo_b, sdo_h, ALIGN)
    tok_base = _slice(TOK, b, h, st_b, st_h, 1)
    row0 = bh * length
    dk = tl.zeros([BLOCK, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK, BLOCK_D], dtype=tl.float32)
    for l in range(WINDOW * WINDOW):
        # The query that sees this key at window position l sits at the opposite offset, which
        # is window position L - 1 - l (the offsets are symmetric, row-major).
        src, inside = _neighbour(offs_n, mask_n, height, width, WINDOW * WINDOW - 1 - l, WINDOW)
        mask_qd = inside[:, None] & mask_d[None, :]
        qf, f = _queries(q_base, QE, HS, QS, h, sq_n, src, offs_d, inside, mask_d,
                         HEAD_DIM, ALIGN)
        qf = qf * f[:, None]
        do = _tile(do_base, sdo_n, src, offs_d, mask_qd, ALIGN).to(tl.float32)
        lse = tl.load(LSE + row0 + src, mask=inside, other=0.)
        delta = tl.load(DELTA + row0 + src, mask=inside, other=0.)
        tok = tl.load(tok_base + src * st_n + l, mask=inside, other=0.).to(tl.float32)
        s = tl.sum(qf * key, 1) + tl.load(RPB + h * WINDOW * WINDOW + l).to(tl.float32)
        p = tl.where(inside, tl.exp(s - lse), 0.)
        ds = p * (tl.sum(do * value, 1) - delta)
        dk += ds[:, None] * qf
        dv += (p + tok)[:, None] * do
        tl.atomic_add(DRPB + h * WINDOW * WINDOW + l, tl.sum(ds, 0), sem='relaxed')
    grad_at = row0 * HEAD_DIM + offs_n[:, None] * HEAD_DIM + offs_d[None, :]
    tl.store(DK + grad_at, dk.to(DK.dtype.element_ty), mask=mask_nd)
    tl.store(DV + grad_at, dv.to(DV.dtype.element_ty), mask=mask_nd)


@triton.jit(do_not_specialize=UNSPECIALISED)
def _attention_bwd_keys(Q, QE, HS, QS, K, V, TOK, RPB, KP, VP, FOLD, RT, WT, DO, LSE, DELTA, DK,
                        DV, DRPB, DKP, DVP,
                        sq_b, sq_h, sq_n, sk_b, sk_h, sk_n, sv_b, sv_h, sv_n, st_b, st_h,
                        st_n, skp_b, skp_h, skp_n, svp_b, svp_h, svp_n, sdo_b, sdo_h, sdo_n,
                        heads, height, width, num_keys, key_h, key_w, fold_n, taps, transposed,
                        splits, pooled_programs, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, WINDOW: tl.constexpr,
                        weighted, PRECISION: tl.constexpr, ALIGN: tl.constexpr):
    """Key gradients, after :func:`_attention_bwd_query` has stored ``delta``: programs below
    ``pooled_programs`` take a tile of pooled keys and a run of query tiles each
    (:func:`_pooled_key_grads`, ``DKP``/``DVP`` float32 ``(B, heads, splits, P, d)``), the others
    a tile of ``BLOCK_M`` window keys (:func:`_window_key_grads`, ``DK``/``DV`` ``(B, heads, N,
    d)`` contiguous). The pooled-key query loop is pipelined (see :func:`_cpb_bias`)."""
    pid = tl.program_id(0)
    if pid < pooled_programs:
        _pooled_key_grads(pid, Q, QE, HS, QS, KP, VP, FOLD, RT, WT, DO, LSE, DELTA, DKP, DVP,
                          sq_b, sq_h, sq_n, skp_b, skp_h, skp_n, svp_b, svp_h, svp_n,
                          sdo_b, sdo_h, sdo_n, heads, height, width, num_keys, key_h, key_w,
                          fold_n, taps, transposed, splits, HEAD_DIM, BLOCK_D, BLOCK_M, BLOCK_N,
                          weighted, PRECISION, ALIGN)
    elif WINDOW > 0:
        _window_key_grads(pid - pooled_programs, Q, QE, HS, QS, K, V, TOK, RPB, DO, LSE, DELTA,
                          DK, DV, DRPB, sq_b, sq_h, sq_n, sk_b, sk_h, sk_n, sv_b, sv_h,
                          sv_n, st_b, st_h, st_n, sdo_b, sdo_h, sdo_n, heads, height, width,
                          HEAD_DIM, BLOCK_D, BLOCK_M, WINDOW, ALIGN)
