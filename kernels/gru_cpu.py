"""GRU recurrences on the CPU (``@njit``), torch.nn.GRU's equations (gates r, z, n).

The caller computes U = x Wxᵀ + bx for every step in one product; the recurrent biases bs enter
here because n = tanh(U_n + r ⊙ (Ws_n h + bs_n)) keeps bs_n inside the reset gate. Conventions
(lengths, reverse, truncate, clip) and the two ways to split the work (``loops``, ``blas``:
cpu_variants.py) as in ``elman_cpu.py``. Twins: ``gru_cuda.py``.
"""
import numpy as np
from numba import njit, prange

from . import cpu_variants

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


_forward_kernels = {"loops": cpu_variants.compile_both(_forward_loops),
                    "blas": cpu_variants.compile_both(_forward_blas)}
_backward_kernels = {"loops": cpu_variants.compile_both(_backward_loops),
                     "blas": cpu_variants.compile_both(_backward_blas)}


def forward_recurrence(U, Ws, bs, H0, lengths, reverse, Hs, Gn):
    """U      [T,B,3H] Wx x_t + bx for every step; overwritten with the gates (r, z, n)
    Ws     [3H,H]   contiguous
    bs     [3H]     recurrent biases
    H0     [B,H]    initial state
    lengths [B], reverse: as elman_cpu
    Hs     [T,B,H]  out: hidden states
    Gn     [T,B,H]  out: Ws_n h_{t-1} + bs_n, saved for backward
    """
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
    variant, tile, shares = cpu_variants.plan(G.shape[1], Ws)
    kernel = cpu_variants.pick(_backward_kernels[variant], shares)
    if variant == "loops":
        kernel(dH_out, *cpu_variants.backward_weight(Ws, tile), G, Gn, Hs, H0, lengths, reverse, truncate, clip, dRec,
               dNx, dH0, tile, shares)
    else:
        kernel(dH_out, cpu_variants.blas_backward_weight(Ws, tile, Hs), G, Gn, Hs, H0, lengths, reverse, truncate,
               clip, dRec, dNx, dH0, tile, shares)
