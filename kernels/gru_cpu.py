"""GRU recurrences on the CPU (``@njit``), torch.nn.GRU's equations (gates r, z, n).

The caller computes U = x Wxᵀ + bx for every step in one product; the recurrent biases bs enter
here because n = tanh(U_n + r ⊙ (Ws_n h + bs_n)) keeps bs_n inside the reset gate. Conventions
(lengths, reverse, truncate, clip) as in ``elman_cpu.py``. Twins: ``gru_cuda.py``.
"""
import numpy as np
from numba import njit

from . import activations
from .scalar import compile_scalar_functions

_scalar = compile_scalar_functions(activations, njit(cache=True))
gru_pointwise = _scalar.gru_pointwise
gru_pointwise_backward = _scalar.gru_pointwise_backward
position = _scalar.position
clip_scale = _scalar.clip_scale


@njit(cache=True)
def forward_recurrence(U, WsT, bs, H0, lengths, reverse, Hs, Gn):
    """U      [T,B,3H] Wx x_t + bx for every step; overwritten with the gates (r, z, n)
    WsT    [H,3H]   Wsᵀ, contiguous
    bs     [3H]     recurrent biases
    H0     [B,H]    initial state
    lengths [B], reverse: as elman_cpu
    Hs     [T,B,H]  out: hidden states
    Gn     [T,B,H]  out: Ws_n h_{t-1} + bs_n, saved for backward
    """
    T, B, G = U.shape
    H = G // 3
    one = U.dtype.type(1.0)
    h = H0.copy()
    rec = np.empty((B, G), dtype=U.dtype)
    for i in range(T):
        np.dot(h, WsT, rec)
        for b in range(B):
            if i < lengths[b]:
                t = position(i, lengths[b], reverse)
                for j in range(H):
                    hn = rec[b, 2 * H + j] + bs[2 * H + j]
                    r, z, n, hj = gru_pointwise(U[t, b, j] + rec[b, j] + bs[j],
                                                U[t, b, H + j] + rec[b, H + j] + bs[H + j],
                                                U[t, b, 2 * H + j], hn, h[b, j], one)
                    U[t, b, j] = r
                    U[t, b, H + j] = z
                    U[t, b, 2 * H + j] = n
                    Gn[t, b, j] = hn
                    Hs[t, b, j] = hj
                    h[b, j] = hj
            else:
                for j in range(H):
                    Hs[i, b, j] = H0[b, j] if reverse else h[b, j]


@njit(cache=True)
def backward_recurrence(dH_out, Ws, G, Gn, Hs, H0, lengths, reverse, truncate, clip, dRec, dNx, dH0):
    """dH_out [T,B,H]  dL/dh_t through the output of step t alone; used as scratch (overwritten)
    Ws      [3H,H]
    G       [T,B,3H] gates saved by forward; Gn [T,B,H]; Hs [T,B,H]; H0 [B,H]
    lengths, reverse, truncate, clip: as elman_cpu
    dRec    [T,B,3H] out: gradients of the recurrent pre-activations (r, z, Ws_n h + bs_n), which
                     give dWs and dbs; for r and z they are the input pre-activations' too.
                     May be the same array as G.
    dNx     [T,B,H]  out: gradient of n's input part (Wx_n x + bx_n); may be the same array as Gn
    dH0     [B,H]    out: dL/dh0
    """
    T, B, Gs = G.shape
    H = Gs // 3
    one = G.dtype.type(1.0)
    last = np.zeros((B, Gs), dtype=G.dtype)  # dRec of the later step
    rec = np.zeros((B, H), dtype=G.dtype)  # last Ws
    direct = np.zeros((B, H), dtype=G.dtype)  # dh_{t+1} z_{t+1}: the path h_t -> h_{t+1} around the gates
    for i in range(T - 1, -1, -1):
        if truncate > 0 and (i + 1) % truncate == 0:
            rec[:] = 0
            direct[:] = 0
        else:
            np.dot(last, Ws, rec)
        for b in range(B):
            if i < lengths[b]:
                t = position(i, lengths[b], reverse)
                tp = position(i - 1, lengths[b], reverse)
                sumsq = one - one
                for j in range(H):
                    dh = dH_out[t, b, j] + rec[b, j] + direct[b, j]
                    dH_out[t, b, j] = dh
                    sumsq += dh * dh
                scale = clip_scale(sumsq, clip, one)
                for j in range(H):
                    dh = dH_out[t, b, j] * scale
                    z = G[t, b, H + j]
                    h_prev = H0[b, j] if i == 0 else Hs[tp, b, j]
                    dr, dz, dn, dhn = gru_pointwise_backward(dh, G[t, b, j], z, G[t, b, 2 * H + j], Gn[t, b, j],
                                                             h_prev, one)
                    dRec[t, b, j] = dr
                    dRec[t, b, H + j] = dz
                    dRec[t, b, 2 * H + j] = dhn
                    dNx[t, b, j] = dn
                    last[b, j] = dr
                    last[b, H + j] = dz
                    last[b, 2 * H + j] = dhn
                    direct[b, j] = dh * z
            else:
                for m in range(Gs):
                    dRec[i, b, m] = 0
                    last[b, m] = 0
                for j in range(H):
                    dNx[i, b, j] = 0
                    direct[b, j] = 0
    np.dot(last, Ws, dH0)
    dH0 += direct
