"""GRU recurrences on the CPU (``@njit``), torch.nn.GRU's equations (gates r, z, n).

The caller computes U = x Wxᵀ + bx for every step in one product; the recurrent biases bs enter
here because n = tanh(U_n + r ⊙ (Ws_n h + bs_n)) keeps bs_n inside the reset gate. Conventions
(lengths, reverse, truncate, clip) and the two ways to split the work (``loops``, ``blas``:
cpu_variants.py) as in ``elman_cpu.py``, and the gated cells' third for small batches and large
weights (``units``, as in ``lstm_cpu.py``). Twins: ``gru_cuda.py`` (the units variant is CPU-only).
"""
import numpy as np
from numba import njit, prange

from . import cache, cpu_variants  # noqa: F401 (cache: before any function is compiled)

_scalar = cpu_variants.compile_activations()
gru_state = _scalar.gru_state
sigmoid = _scalar.sigmoid
gru_pointwise_backward = _scalar.gru_pointwise_backward
position = _scalar.position
passes = _scalar.passes
clip_scale = _scalar.clip_scale


@njit(**cpu_variants.JIT_OPTIONS)
def _cell(U, t, b, rec, bs, h, Hs, Gn, one):
    """Gates of step t of sequence b from U[t,b] and rec = h Wsᵀ; writes the gates over U[t,b],
    Ws_n h + bs_n into Gn, the state into Hs and the running state h. The formulas of
    ``gru_pointwise`` in loops the compiler vectorises, as in lstm_cpu._cell: r, z, then Ws_n h + bs_n
    (kept apart: the reset gate scales it) in rec, then n and h, then the stores. Measured per unit,
    H = 256: ~0.8 ns; with r, z and bs_n in one loop (eight arrays or offsets), ~8 ns, scalar."""
    H = h.size
    for j in range(2 * H):
        rec[j] = sigmoid(rec[j] + U[t, b, j] + bs[j], one)
    for j in range(H):
        rec[2 * H + j] += bs[2 * H + j]
    for j in range(H):
        Gn[t, b, j] = rec[2 * H + j]
    for j in range(H):
        rec[2 * H + j], h[j] = gru_state(rec[j], rec[H + j], U[t, b, 2 * H + j], rec[2 * H + j], h[j], one)
    for j in range(3 * H):
        U[t, b, j] = rec[j]
    for j in range(H):
        Hs[t, b, j] = h[j]


@njit(**cpu_variants.JIT_OPTIONS)
def _cell_backward(G, Gn, Hs, H0, t, tp, first, b, dh, scale, dRec, dNx, last, direct):
    """Gradients of step t of sequence b from dh = dL/dh_t (rescaled by ``scale``): the recurrent
    pre-activations' into dRec[t,b] and ``last``, n's input part's into dNx[t,b], and the direct
    path dh z to step t-1 into ``direct``."""
    H = dh.size
    one = G.dtype.type(1.0)
    for j in range(H):
        dhj = dh[j] * scale
        z = G[t, b, H + j]
        h_prev = H0[b, j] if first else Hs[tp, b, j]
        dr, dz, dn, dhn = gru_pointwise_backward(dhj, G[t, b, j], z, G[t, b, 2 * H + j], Gn[t, b, j], h_prev, one)
        last[j] = dr
        last[H + j] = dz
        last[2 * H + j] = dhn
        dNx[t, b, j] = dn
        direct[j] = dhj * z
    dRec[t, b] = last


@njit(**cpu_variants.JIT_OPTIONS)
def _clip_scale(dh, clip, one):
    if clip <= 0:
        return one
    sumsq = one - one
    for j in range(dh.size):
        sumsq += dh[j] * dh[j]
    return clip_scale(sumsq, clip, one)


def _forward_loops(U, Ws, bs, H0, lengths, reverse, Hs, Gn, tile, shares):
    """Each of ``shares`` threads runs a contiguous run of tiles of ``tile`` sequences, all of them
    one step at a time (``cpu_variants.share_of``); Ws [3H,H] untransposed."""
    T, B, G = U.shape
    one = U.dtype.type(1.0)
    for share in prange(shares):
        lo, hi = cpu_variants.share_of(share, shares, B, tile)
        h = H0[lo:hi].copy()
        rec = np.empty((tile, G), dtype=U.dtype)
        shortest = lengths[lo:hi].min()
        for i in range(T):
            for first in range(lo, hi, tile):
                n = min(tile, hi - first)
                a, z = first - lo, first - lo + n
                cpu_variants.tile_products(Ws, h[a:z], n, rec)
                _forward_step(U, bs, lengths, reverse, Hs, Gn, i, first, rec, h[a:z], n, one)
                if i >= shortest:
                    cpu_variants.past_end(H0, lengths, reverse, Hs, i, first, h[a:z], n)


def _forward_blas(U, WsT, bs, H0, lengths, reverse, Hs, Gn, piece, shares):
    """Each of ``shares`` threads runs a contiguous slice of the batch, its step products as
    ``cpu_variants.products`` forms them for ``piece`` (Wsᵀ from ``transposed_for``)."""
    T, B, G = U.shape
    one = U.dtype.type(1.0)
    for share in prange(shares):
        first, end = cpu_variants.share_of(share, shares, B, 1)
        h = H0[first:end].copy()
        rec = np.empty((end - first, G), dtype=U.dtype)
        shortest = lengths[first:end].min()
        for i in range(T):
            cpu_variants.products(h, WsT, rec, piece)
            _forward_step(U, bs, lengths, reverse, Hs, Gn, i, first, rec, h, end - first, one)
            if i >= shortest:
                cpu_variants.past_end(H0, lengths, reverse, Hs, i, first, h, end - first)


@njit(**cpu_variants.JIT_OPTIONS)
def _forward_step(U, bs, lengths, reverse, Hs, Gn, i, first, rec, h, n, one):
    """Step i of sequences first..first+n-1 from their recurrent products rec[q] = h[q] Wsᵀ (those not
    past their end: cpu_variants.past_end)."""
    for q in range(n):
        b = first + q
        L = lengths[b]
        if i < L:
            _cell(U, position(i, L, reverse), b, rec[q], bs, h[q], Hs, Gn, one)


def _backward_loops(dH_out, W, W_transposed, G, Gn, Hs, H0, lengths, reverse, truncate, clip, dRec, dNx, dH0, tile,
                    shares):
    """As ``_forward_loops``, backwards in time; W, W_transposed from cpu_variants.backward_weight (Ws
    [3H,H] or its transpose)."""
    T, B, Gs = G.shape
    H = Gs // 3
    for share in prange(shares):
        lo, hi = cpu_variants.share_of(share, shares, B, tile)
        last = np.zeros((hi - lo, Gs), dtype=G.dtype)  # dRec of the later step
        dh = np.empty((tile, H), dtype=G.dtype)  # a tile's last Ws, then dL/dh_t
        direct = np.zeros((hi - lo, H), dtype=G.dtype)  # dh_{t+1} z_{t+1}: the path around the gates
        shortest = lengths[lo:hi].min()
        for i in range(T - 1, -1, -1):
            flows = passes(i + 1, truncate)  # step i+1 starts a chunk of the truncation: nothing flows back
            if not flows:
                direct[:] = 0
            for first in range(lo, hi, tile):
                n = min(tile, hi - first)
                a, z = first - lo, first - lo + n
                if flows:
                    cpu_variants.backward_products(W, W_transposed, last[a:z], n, dh)
                else:
                    dh[:] = 0
                _backward_step(dH_out, G, Gn, Hs, H0, lengths, reverse, clip, dRec, dNx, i, first, last[a:z], dh,
                               direct[a:z], n)
                if i >= shortest:
                    cpu_variants.zero_past_end(lengths, i, first, n, dRec, last[a:z])
                    cpu_variants.zero_past_end(lengths, i, first, n, dNx, direct[a:z])
        for first in range(lo, hi, tile):
            n = min(tile, hi - first)
            a, z = first - lo, first - lo + n
            cpu_variants.backward_products(W, W_transposed, last[a:z], n, dh)
            dH0[first:first + n] = dh[:n] + direct[a:z]


def _backward_blas(dH_out, Ws, G, Gn, Hs, H0, lengths, reverse, truncate, clip, dRec, dNx, dH0, piece, shares):
    """Each of ``shares`` threads runs a contiguous slice of the batch, its step products as
    ``cpu_variants.products`` forms them for ``piece`` (Ws as it lies)."""
    T, B, Gs = G.shape
    H = Gs // 3
    for share in prange(shares):
        first, end = cpu_variants.share_of(share, shares, B, 1)
        last = np.zeros((end - first, Gs), dtype=G.dtype)  # dRec of the later step
        dh = np.zeros((end - first, H), dtype=G.dtype)  # last Ws, then dL/dh_t
        direct = np.zeros((end - first, H), dtype=G.dtype)  # dh_{t+1} z_{t+1}
        shortest = lengths[first:end].min()
        for i in range(T - 1, -1, -1):
            if not passes(i + 1, truncate):
                dh[:] = 0
                direct[:] = 0
            else:
                cpu_variants.products(last, Ws, dh, piece)
            _backward_step(dH_out, G, Gn, Hs, H0, lengths, reverse, clip, dRec, dNx, i, first, last, dh, direct,
                           end - first)
            if i >= shortest:
                cpu_variants.zero_past_end(lengths, i, first, end - first, dRec, last)
                cpu_variants.zero_past_end(lengths, i, first, end - first, dNx, direct)
        cpu_variants.products(last, Ws, dH0[first:end], piece)
        dH0[first:end] += direct


@njit(**cpu_variants.JIT_OPTIONS)
def _backward_step(dH_out, G, Gn, Hs, H0, lengths, reverse, clip, dRec, dNx, i, first, last, dh, direct, n):
    """Step i (backwards) of sequences first..first+n-1 from dh[q] = (the later step's dRec) Ws (those
    not past their end: cpu_variants.zero_past_end)."""
    H = dh.shape[1]
    one = G.dtype.type(1.0)
    for q in range(n):
        b = first + q
        L = lengths[b]
        if i >= L:
            continue
        t = position(i, L, reverse)
        for j in range(H):
            dh[q, j] += dH_out[t, b, j] + direct[q, j]
        _cell_backward(G, Gn, Hs, H0, t, position(i - 1, L, reverse), i == 0, b, dh[q],
                       _clip_scale(dh[q], clip, one), dRec, dNx, last[q], direct[q])


@njit(**cpu_variants.JIT_OPTIONS)
def _cell_units(U, t, b, rec, bs, h, Hs, Gn, one, u0):
    """``_cell`` for the units u0..u0+n-1 (n = h.size) alone, the units variant's: rec their
    recurrent products ([r, z, n] of those units, 3n), h their values (the state before the step on
    entry). Over views of each gate's n values, as ``lstm_cpu._cell_units`` (which says why a
    function of its own)."""
    n = h.size
    ur, uz, un = _gate_views(U[t, b], u0, n)
    br, bz, bn = _gate_views(bs, u0, n)
    rr, rz, rn = _gate_views(rec, 0, n)
    for j in range(n):
        rr[j] = sigmoid(rr[j] + ur[j] + br[j], one)
        rz[j] = sigmoid(rz[j] + uz[j] + bz[j], one)
    for j in range(n):
        rn[j] += bn[j]
    gn = Gn[t, b, u0:u0 + n]
    for j in range(n):
        gn[j] = rn[j]
    for j in range(n):
        rn[j], h[j] = gru_state(rr[j], rz[j], un[j], rn[j], h[j], one)
    for j in range(n):
        ur[j] = rr[j]
        uz[j] = rz[j]
        un[j] = rn[j]
    hs = Hs[t, b, u0:u0 + n]
    for j in range(n):
        hs[j] = h[j]


@njit(inline="always", **cpu_variants.JIT_OPTIONS)
def _gate_views(row, u0, n):
    """The views of units u0..u0+n-1 of gates r, z, n in a row of 3 blocks of row.size / 3 units."""
    H = row.size // 3
    return row[u0:u0 + n], row[H + u0:H + u0 + n], row[2 * H + u0:2 * H + u0 + n]


@njit(**cpu_variants.JIT_OPTIONS)
def _cell_backward_units(G, Gn, Hs, H0, t, tp, first, b, dh, scale, dRec, dNx, last, direct, u0):
    """``_cell_backward`` for the units u0..u0+n-1 (n = dh.size) alone, the units variant's: dh and
    direct their values, ``last`` a whole row ([r, z, n] of every unit)."""
    n = dh.size
    one = G.dtype.type(1.0)
    gr, gz, gn = _gate_views(G[t, b], u0, n)
    lr, lz, ln = _gate_views(last, u0, n)
    hn, dn = Gn[t, b, u0:u0 + n], dNx[t, b, u0:u0 + n]
    h_prev = H0[b, u0:u0 + n] if first else Hs[tp, b, u0:u0 + n]
    for j in range(n):
        dhj = dh[j] * scale
        lr[j], lz[j], dn[j], ln[j] = gru_pointwise_backward(dhj, gr[j], gz[j], gn[j], hn[j], h_prev[j], one)
        direct[j] = dhj * gz[j]
    orr, oz, on = _gate_views(dRec[t, b], u0, n)
    for j in range(n):
        orr[j] = lr[j]
        oz[j] = lz[j]
        on[j] = ln[j]


# The units variant (cpu_variants.py says when and why; ``lstm_cpu._forward_units`` how).
def _forward_units(U, Ws, Wp, cuts, bs, H0, lengths, reverse, Hs, Gn):
    """Wp (``cpu_variants.units_weight``): for thread s's columns of Wsᵀ, the columns of gates r, z,
    n of its units one gate after the other, which it packs there itself."""
    T, B, _ = U.shape
    slices = cuts.size - 1
    one = U.dtype.type(1.0)
    for s in prange(slices):
        cpu_variants.pack_units(Ws, Wp, cuts, s, True)
    h, rec = cpu_variants.units_buffers(H0, Wp)
    for i in range(T):
        prev, now = h[i % 2], h[1 - i % 2]
        for s in prange(slices):
            u0, u1 = cuts[s], cuts[s + 1]
            r = cpu_variants.units_forward_product(prev, Wp, s, u0, u1, 3, rec)
            for b in range(B):
                for j in range(u0, u1):
                    now[b, j] = prev[b, j]
                L = lengths[b]
                if i < L:
                    _cell_units(U, position(i, L, reverse), b, r[b], bs, now[b, u0:u1], Hs, Gn, one, u0)
                else:  # past the end the state stays put (cpu_variants.past_end)
                    for j in range(u0, u1):
                        Hs[i, b, j] = H0[b, j] if reverse else prev[b, j]


def _backward_units(dH_out, Ws, Wb, cuts, G, Gn, Hs, H0, lengths, reverse, truncate, clip, dRec, dNx, dH0):
    """Wb (``cpu_variants.units_weight``): for thread s's columns of Ws, which it packs there itself.
    With clipping a step takes two regions, as ``lstm_cpu._backward_units``."""
    T, B, Gs = G.shape
    slices = cuts.size - 1
    for s in prange(slices):
        cpu_variants.pack_units(Ws, Wb, cuts, s, False)
    last, dh, direct, sumsq = cpu_variants.units_backward_buffers(B, Gs, Gs // 3, slices, G.dtype)
    for i in range(T - 1, -1, -1):
        later, now = last[(i + 1) % 2], last[i % 2]
        flows = passes(i + 1, truncate)  # step i+1 starts a chunk of the truncation: nothing flows back
        for s in prange(slices):
            u0, u1 = cuts[s], cuts[s + 1]
            cpu_variants.units_backward_rows(dH_out, Wb, later, s, u0, u1, flows, lengths, reverse, i, clip, dh, direct,
                                             sumsq, True)
            if clip <= 0:
                _backward_units_step(G, Gn, Hs, H0, lengths, reverse, dRec, dNx, i, u0, u1, now, dh, direct, sumsq,
                                     clip)
        if clip > 0:
            for s in prange(slices):
                _backward_units_step(G, Gn, Hs, H0, lengths, reverse, dRec, dNx, i, cuts[s], cuts[s + 1], now, dh,
                                     direct, sumsq, clip)
    for s in prange(slices):  # last[0]: step 0's dRec
        cpu_variants.units_backward_end(last[0], Wb, s, cuts[s], cuts[s + 1], dH0, direct, True)


@njit(**cpu_variants.JIT_OPTIONS)
def _backward_units_step(G, Gn, Hs, H0, lengths, reverse, dRec, dNx, i, u0, u1, now, dh, direct, sumsq, clip):
    """The units u0..u1-1 of backward step i for every sequence, from dh = dL/dh_t (those past their
    end: no gradient, cpu_variants.units_zero_past_end)."""
    one = G.dtype.type(1.0)
    zero = one - one
    for b in range(dh.shape[0]):
        L = lengths[b]
        if i >= L:
            cpu_variants.units_zero_past_end(dRec, now, direct, i, b, u0, u1)
            for j in range(u0, u1):
                dNx[i, b, j] = zero
            continue
        scale = clip_scale(sumsq[:, b].sum(), clip, one) if clip > 0 else one
        _cell_backward_units(G, Gn, Hs, H0, position(i, L, reverse), position(i - 1, L, reverse), i == 0, b,
                             dh[b, u0:u1], scale, dRec, dNx, now[b], direct[b, u0:u1], u0)


_forward_kernels = {"loops": cpu_variants.compile_both(_forward_loops),
                    "blas": cpu_variants.compile_both(_forward_blas)}
_backward_kernels = {"loops": cpu_variants.compile_both(_backward_loops),
                     "blas": cpu_variants.compile_both(_backward_blas)}
_forward_units_kernel = njit(parallel=True, **cpu_variants.JIT_OPTIONS)(_forward_units)
_backward_units_kernel = njit(parallel=True, **cpu_variants.JIT_OPTIONS)(_backward_units)


def forward_recurrence(U, Ws, bs, H0, lengths, reverse, Hs, Gn):
    """U      [T,B,3H] Wx x_t + bx for every step; overwritten with the gates (r, z, n)
    Ws     [3H,H]   contiguous
    bs     [3H]     recurrent biases
    H0     [B,H]    initial state
    lengths [B], reverse: as elman_cpu
    Hs     [T,B,H]  out: hidden states
    Gn     [T,B,H]  out: Ws_n h_{t-1} + bs_n, saved for backward
    """
    units = cpu_variants.units_plan(U.shape[1], Ws)
    if units is not None:
        _forward_units_kernel(U, Ws, *units, bs, H0, lengths, reverse, Hs, Gn)
        return
    variant, tile, shares = cpu_variants.plan(U.shape[1], Ws)
    kernel = cpu_variants.pick(_forward_kernels[variant], shares)
    if variant == "loops":
        kernel(U, Ws, bs, H0, lengths, reverse, Hs, Gn, tile, shares)
    else:
        kernel(U, cpu_variants.transposed_for(Ws, tile), bs, H0, lengths, reverse, Hs, Gn, tile, shares)


def backward_recurrence(dH_out, Ws, G, Gn, Hs, H0, lengths, reverse, truncate, clip, dRec, dNx, dH0):
    """dH_out [T,B,H]  dL/dh_t through the output of step t alone (read only here; the CUDA twin may
                     use it as scratch)
    Ws      [3H,H]
    G       [T,B,3H] gates saved by forward; Gn [T,B,H]; Hs [T,B,H]; H0 [B,H]
    lengths, reverse, truncate, clip: as elman_cpu
    dRec    [T,B,3H] out: gradients of the recurrent pre-activations (r, z, Ws_n h + bs_n), which
                     give dWs and dbs; for r and z they are the input pre-activations' too.
                     May be the same array as G.
    dNx     [T,B,H]  out: gradient of n's input part (Wx_n x + bx_n); may be the same array as Gn
    dH0     [B,H]    out: dL/dh0
    """
    units = cpu_variants.units_plan(G.shape[1], Ws)
    if units is not None:
        _backward_units_kernel(dH_out, Ws, *units, G, Gn, Hs, H0, lengths, reverse, truncate, clip, dRec, dNx, dH0)
        return
    variant, tile, shares = cpu_variants.plan(G.shape[1], Ws)
    kernel = cpu_variants.pick(_backward_kernels[variant], shares)
    if variant == "loops":
        kernel(dH_out, *cpu_variants.backward_weight(Ws, tile), G, Gn, Hs, H0, lengths, reverse, truncate, clip, dRec,
               dNx, dH0, tile, shares)
    else:
        kernel(dH_out, cpu_variants.blas_backward_weight(Ws, tile, Hs), G, Gn, Hs, H0, lengths, reverse, truncate,
               clip, dRec, dNx, dH0, tile, shares)
