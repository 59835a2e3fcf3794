"""LSTM recurrences on the CPU (``@njit``), torch.nn.LSTM's equations (gates i, f, g, o).

The caller computes U = x Wxᵀ + bx + bs for every step in one product; these loops add h_{t-1} Wsᵀ,
apply the gates (shared scalar math in activations.py) and run backwards for the gate gradients.
Conventions (lengths, reverse, truncate, clip) and the two ways to split the work (``loops``,
``blas``: cpu_variants.py) as in ``elman_cpu.py``; the per-step clipping acts on the whole
backpropagated state gradient (dL/dh_t, dL/dc_t). Twins: ``lstm_cuda.py``.
"""
import numpy as np
from numba import get_num_threads, njit, prange

from . import activations, cpu_variants
from .scalar import compile_scalar_functions

_scalar = compile_scalar_functions(activations, njit(**cpu_variants.JIT_OPTIONS))
lstm_pointwise = _scalar.lstm_pointwise
lstm_pointwise_backward = _scalar.lstm_pointwise_backward
position = _scalar.position
clip_scale = _scalar.clip_scale


@njit(**cpu_variants.JIT_OPTIONS)
def _cell(U, t, b, rec, c, h, Hs, Cs, one):
    """Gates of step t of sequence b from U[t,b] + rec (the recurrent products); writes the gates over
    U[t,b], the states into Hs, Cs and the running state c, h."""
    H = c.size
    for j in range(H):
        gi, gf, gg, go, cj, hj = lstm_pointwise(
            U[t, b, j] + rec[j], U[t, b, H + j] + rec[H + j], U[t, b, 2 * H + j] + rec[2 * H + j],
            U[t, b, 3 * H + j] + rec[3 * H + j], c[j], one)
        U[t, b, j] = gi
        U[t, b, H + j] = gf
        U[t, b, 2 * H + j] = gg
        U[t, b, 3 * H + j] = go
        Cs[t, b, j] = cj
        Hs[t, b, j] = hj
        c[j] = cj
        h[j] = hj


@njit(**cpu_variants.JIT_OPTIONS)
def _cell_backward(G, Cs, C0, t, tp, first, b, dh, dcn, scale, dG, last):
    """Gate gradients of step t of sequence b from dh = dL/dh_t and dcn = dL/dc_t through c_{t+1}
    (both rescaled by ``scale``); writes them into dG[t,b] and ``last``, and carries dcn to t-1."""
    H = dh.size
    one = G.dtype.type(1.0)
    for j in range(H):
        gf = G[t, b, H + j]
        c_prev = C0[b, j] if first else Cs[tp, b, j]
        di, df, dg, do, dc = lstm_pointwise_backward(dh[j] * scale, dcn[j] * scale, G[t, b, j], gf,
                                                     G[t, b, 2 * H + j], G[t, b, 3 * H + j], Cs[t, b, j], c_prev,
                                                     one)
        last[j] = di
        last[H + j] = df
        last[2 * H + j] = dg
        last[3 * H + j] = do
        dcn[j] = dc * gf
    dG[t, b] = last


@njit(**cpu_variants.JIT_OPTIONS)
def _clip_scale(dh, dcn, clip, one):
    if clip <= 0:
        return one
    sumsq = one - one
    for j in range(dh.size):
        sumsq += dh[j] * dh[j] + dcn[j] * dcn[j]
    return clip_scale(sumsq, clip, one)


@njit(parallel=True, **cpu_variants.JIT_OPTIONS)
def _forward_loops(U, Ws, H0, C0, lengths, reverse, Hs, Cs, shares):
    """Each of ``shares`` threads runs whole sequences; Ws [4H,H] untransposed (contiguous rows)."""
    T, B, G = U.shape
    H = G // 4
    one = U.dtype.type(1.0)
    for share in prange(shares):
        h = np.empty(H, dtype=U.dtype)
        c = np.empty(H, dtype=U.dtype)
        rec = np.empty(G, dtype=U.dtype)
        for b in range(share, B, shares):
            L = lengths[b]
            h[:] = H0[b]
            c[:] = C0[b]
            for i in range(T):
                if i < L:
                    t = position(i, L, reverse)
                    for m in range(G):
                        acc = one - one
                        for k in range(H):
                            acc += Ws[m, k] * h[k]
                        rec[m] = acc
                    _cell(U, t, b, rec, c, h, Hs, Cs, one)
                else:
                    Hs[i, b] = H0[b] if reverse else h
                    Cs[i, b] = C0[b] if reverse else c


@njit(**cpu_variants.JIT_OPTIONS)
def _forward_blas(U, WsT, H0, C0, lengths, reverse, Hs, Cs):
    """One time loop; each step one BLAS product for the whole batch."""
    T, B, G = U.shape
    one = U.dtype.type(1.0)
    h = H0.copy()
    c = C0.copy()
    rec = np.empty((B, G), dtype=U.dtype)
    for i in range(T):
        np.dot(h, WsT, rec)
        for b in range(B):
            if i < lengths[b]:
                _cell(U, position(i, lengths[b], reverse), b, rec[b], c[b], h[b], Hs, Cs, one)
            else:
                Hs[i, b] = H0[b] if reverse else h[b]
                Cs[i, b] = C0[b] if reverse else c[b]


@njit(parallel=True, **cpu_variants.JIT_OPTIONS)
def _backward_loops(dH_out, WsT, G, Hs, Cs, C0, lengths, reverse, truncate, clip, dG, dH0, dC0, shares):
    """Each of ``shares`` threads runs whole sequences; WsT [H,4H] (contiguous rows)."""
    T, B, Gs = G.shape
    H = Gs // 4
    one = G.dtype.type(1.0)
    for share in prange(shares):
        last = np.empty(Gs, dtype=G.dtype)  # dG of the later step
        dcn = np.empty(H, dtype=G.dtype)  # dL/dc_t through c_{t+1}
        dh = np.empty(H, dtype=G.dtype)  # dL/dh_t
        for b in range(share, B, shares):
            L = lengths[b]
            last[:] = 0
            dcn[:] = 0
            for i in range(T - 1, -1, -1):
                if i >= L:
                    dG[i, b] = 0
                    continue
                t = position(i, L, reverse)
                if truncate > 0 and (i + 1) % truncate == 0:  # step i+1 starts a chunk: nothing flows back
                    dh[:] = dH_out[t, b]
                    dcn[:] = 0
                else:
                    for j in range(H):
                        acc = dH_out[t, b, j]
                        for m in range(Gs):
                            acc += WsT[j, m] * last[m]
                        dh[j] = acc
                _cell_backward(G, Cs, C0, t, position(i - 1, L, reverse), i == 0, b, dh, dcn,
                               _clip_scale(dh, dcn, clip, one), dG, last)
            for j in range(H):
                acc = one - one
                for m in range(Gs):
                    acc += WsT[j, m] * last[m]
                dH0[b, j] = acc
            dC0[b] = dcn


@njit(**cpu_variants.JIT_OPTIONS)
def _backward_blas(dH_out, Ws, G, Hs, Cs, C0, lengths, reverse, truncate, clip, dG, dH0, dC0):
    """One reverse time loop; each step one BLAS product for the whole batch."""
    T, B, Gs = G.shape
    H = Gs // 4
    one = G.dtype.type(1.0)
    last = np.zeros((B, Gs), dtype=G.dtype)  # dG of the later step
    rec = np.zeros((B, H), dtype=G.dtype)  # last Ws, then dL/dh_t
    dcn = np.zeros((B, H), dtype=G.dtype)  # dL/dc_t through c_{t+1}
    for i in range(T - 1, -1, -1):
        if truncate > 0 and (i + 1) % truncate == 0:
            rec[:] = 0
            dcn[:] = 0
        else:
            np.dot(last, Ws, rec)
        for b in range(B):
            L = lengths[b]
            if i < L:
                t = position(i, L, reverse)
                dh = rec[b]
                for j in range(H):
                    dh[j] += dH_out[t, b, j]
                _cell_backward(G, Cs, C0, t, position(i - 1, L, reverse), i == 0, b, dh, dcn[b],
                               _clip_scale(dh, dcn[b], clip, one), dG, last[b])
            else:
                dG[i, b] = 0
                last[b] = 0
                dcn[b] = 0
    np.dot(last, Ws, dH0)
    dC0[:] = dcn


def forward_recurrence(U, WsT, H0, C0, lengths, reverse, Hs, Cs):
    """U      [T,B,4H] gate pre-activations from the inputs; overwritten with the gates (i, f, g, o)
    WsT    [H,4H]   Wsᵀ, contiguous
    H0, C0 [B,H]    initial hidden and cell state
    lengths [B], reverse: as elman_cpu
    Hs, Cs [T,B,H]  out: hidden and cell states
    """
    B = U.shape[1]
    if cpu_variants.choose(B, Hs.shape[2]) == "loops":
        _forward_loops(U, np.ascontiguousarray(WsT.T), H0, C0, lengths, reverse, Hs, Cs, min(B, get_num_threads()))
    else:
        _forward_blas(U, WsT, H0, C0, lengths, reverse, Hs, Cs)


def backward_recurrence(dH_out, Ws, G, Hs, Cs, C0, lengths, reverse, truncate, clip, dG, dH0, dC0):
    """dH_out [T,B,H]  dL/dh_t through the output of step t alone (read only here; the CUDA twin may
                     use it as scratch)
    Ws      [4H,H]
    G       [T,B,4H] gates saved by forward; Hs, Cs [T,B,H] states; C0 [B,H]
    lengths, reverse, truncate, clip: as elman_cpu
    dG      [T,B,4H] out: gradients of the gate pre-activations; may be the same array as G
    dH0, dC0 [B,H]   out: dL/dh0, dL/dc0
    """
    B = G.shape[1]
    if cpu_variants.choose(B, Hs.shape[2]) == "loops":
        _backward_loops(dH_out, np.ascontiguousarray(Ws.T), G, Hs, Cs, C0, lengths, reverse, truncate, clip, dG,
                        dH0, dC0, min(B, get_num_threads()))
    else:
        _backward_blas(dH_out, Ws, G, Hs, Cs, C0, lengths, reverse, truncate, clip, dG, dH0, dC0)
