"""GRU recurrences on the CPU (``@njit``), torch.nn.GRU's equations (gates r, z, n).

The caller computes U = x Wxᵀ + bx for every step in one product; the recurrent biases bs enter
here because n = tanh(U_n + r ⊙ (Ws_n h + bs_n)) keeps bs_n inside the reset gate. Conventions
(lengths, reverse, truncate, clip) and the two ways to split the work (``loops``, ``blas``:
cpu_variants.py) as in ``elman_cpu.py``. Twins: ``gru_cuda.py``.
"""
import numpy as np
from numba import get_num_threads, njit, prange

from . import activations, cpu_variants
from .scalar import compile_scalar_functions

_scalar = compile_scalar_functions(activations, njit(**cpu_variants.JIT_OPTIONS))
gru_pointwise = _scalar.gru_pointwise
gru_pointwise_backward = _scalar.gru_pointwise_backward
position = _scalar.position
clip_scale = _scalar.clip_scale


@njit(**cpu_variants.JIT_OPTIONS)
def _cell(U, t, b, rec, bs, h, Hs, Gn, one):
    """Gates of step t of sequence b from U[t,b] and rec = h Wsᵀ; writes the gates over U[t,b],
    Ws_n h + bs_n into Gn, the state into Hs and the running state h."""
    H = h.size
    for j in range(H):
        hn = rec[2 * H + j] + bs[2 * H + j]
        r, z, n, hj = gru_pointwise(U[t, b, j] + rec[j] + bs[j], U[t, b, H + j] + rec[H + j] + bs[H + j],
                                    U[t, b, 2 * H + j], hn, h[j], one)
        U[t, b, j] = r
        U[t, b, H + j] = z
        U[t, b, 2 * H + j] = n
        Gn[t, b, j] = hn
        Hs[t, b, j] = hj
        h[j] = hj


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


@njit(parallel=True, **cpu_variants.JIT_OPTIONS)
def _forward_loops(U, Ws, bs, H0, lengths, reverse, Hs, Gn, shares):
    """Each of ``shares`` threads runs whole sequences; Ws [3H,H] untransposed (contiguous rows)."""
    T, B, G = U.shape
    H = G // 3
    one = U.dtype.type(1.0)
    for share in prange(shares):
        h = np.empty(H, dtype=U.dtype)
        rec = np.empty(G, dtype=U.dtype)
        for b in range(share, B, shares):
            L = lengths[b]
            h[:] = H0[b]
            for i in range(T):
                if i < L:
                    for m in range(G):
                        acc = one - one
                        for k in range(H):
                            acc += Ws[m, k] * h[k]
                        rec[m] = acc
                    _cell(U, position(i, L, reverse), b, rec, bs, h, Hs, Gn, one)
                else:
                    Hs[i, b] = H0[b] if reverse else h


@njit(**cpu_variants.JIT_OPTIONS)
def _forward_blas(U, WsT, bs, H0, lengths, reverse, Hs, Gn):
    """One time loop; each step one BLAS product for the whole batch."""
    T, B, G = U.shape
    one = U.dtype.type(1.0)
    h = H0.copy()
    rec = np.empty((B, G), dtype=U.dtype)
    for i in range(T):
        np.dot(h, WsT, rec)
        for b in range(B):
            if i < lengths[b]:
                _cell(U, position(i, lengths[b], reverse), b, rec[b], bs, h[b], Hs, Gn, one)
            else:
                Hs[i, b] = H0[b] if reverse else h[b]


@njit(parallel=True, **cpu_variants.JIT_OPTIONS)
def _backward_loops(dH_out, WsT, G, Gn, Hs, H0, lengths, reverse, truncate, clip, dRec, dNx, dH0, shares):
    """Each of ``shares`` threads runs whole sequences; WsT [H,3H] (contiguous rows)."""
    T, B, Gs = G.shape
    H = Gs // 3
    one = G.dtype.type(1.0)
    for share in prange(shares):
        last = np.empty(Gs, dtype=G.dtype)  # dRec of the later step
        direct = np.empty(H, dtype=G.dtype)  # dh_{t+1} z_{t+1}: the path h_t -> h_{t+1} around the gates
        dh = np.empty(H, dtype=G.dtype)
        for b in range(share, B, shares):
            L = lengths[b]
            last[:] = 0
            direct[:] = 0
            for i in range(T - 1, -1, -1):
                if i >= L:
                    dRec[i, b] = 0
                    dNx[i, b] = 0
                    continue
                t = position(i, L, reverse)
                if truncate > 0 and (i + 1) % truncate == 0:  # step i+1 starts a chunk: nothing flows back
                    dh[:] = dH_out[t, b]
                else:
                    for j in range(H):
                        acc = dH_out[t, b, j] + direct[j]
                        for m in range(Gs):
                            acc += WsT[j, m] * last[m]
                        dh[j] = acc
                _cell_backward(G, Gn, Hs, H0, t, position(i - 1, L, reverse), i == 0, b, dh,
                               _clip_scale(dh, clip, one), dRec, dNx, last, direct)
            for j in range(H):
                acc = direct[j]
                for m in range(Gs):
                    acc += WsT[j, m] * last[m]
                dH0[b, j] = acc


@njit(**cpu_variants.JIT_OPTIONS)
def _backward_blas(dH_out, Ws, G, Gn, Hs, H0, lengths, reverse, truncate, clip, dRec, dNx, dH0):
    """One reverse time loop; each step one BLAS product for the whole batch."""
    T, B, Gs = G.shape
    H = Gs // 3
    one = G.dtype.type(1.0)
    last = np.zeros((B, Gs), dtype=G.dtype)  # dRec of the later step
    rec = np.zeros((B, H), dtype=G.dtype)  # last Ws, then dL/dh_t
    direct = np.zeros((B, H), dtype=G.dtype)  # dh_{t+1} z_{t+1}
    for i in range(T - 1, -1, -1):
        if truncate > 0 and (i + 1) % truncate == 0:
            rec[:] = 0
            direct[:] = 0
        else:
            np.dot(last, Ws, rec)
        for b in range(B):
            L = lengths[b]
            if i < L:
                t = position(i, L, reverse)
                dh = rec[b]
                for j in range(H):
                    dh[j] += dH_out[t, b, j] + direct[b, j]
                _cell_backward(G, Gn, Hs, H0, t, position(i - 1, L, reverse), i == 0, b, dh,
                               _clip_scale(dh, clip, one), dRec, dNx, last[b], direct[b])
            else:
                dRec[i, b] = 0
                dNx[i, b] = 0
                last[b] = 0
                direct[b] = 0
    np.dot(last, Ws, dH0)
    dH0 += direct


def forward_recurrence(U, WsT, bs, H0, lengths, reverse, Hs, Gn):
    """U      [T,B,3H] Wx x_t + bx for every step; overwritten with the gates (r, z, n)
    WsT    [H,3H]   Wsᵀ, contiguous
    bs     [3H]     recurrent biases
    H0     [B,H]    initial state
    lengths [B], reverse: as elman_cpu
    Hs     [T,B,H]  out: hidden states
    Gn     [T,B,H]  out: Ws_n h_{t-1} + bs_n, saved for backward
    """
    B = U.shape[1]
    if cpu_variants.choose(B, Hs.shape[2]) == "loops":
        _forward_loops(U, np.ascontiguousarray(WsT.T), bs, H0, lengths, reverse, Hs, Gn, min(B, get_num_threads()))
    else:
        _forward_blas(U, WsT, bs, H0, lengths, reverse, Hs, Gn)


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
    B = G.shape[1]
    if cpu_variants.choose(B, Hs.shape[2]) == "loops":
        _backward_loops(dH_out, np.ascontiguousarray(Ws.T), G, Gn, Hs, H0, lengths, reverse, truncate, clip, dRec,
                        dNx, dH0, min(B, get_num_threads()))
    else:
        _backward_blas(dH_out, Ws, G, Gn, Hs, H0, lengths, reverse, truncate, clip, dRec, dNx, dH0)
