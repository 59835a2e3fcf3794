"""LSTM recurrences on the CPU (``@njit``), torch.nn.LSTM's equations (gates i, f, g, o).

The caller computes U = x Wxᵀ + bx + bs for every step in one product; these loops add h_{t-1} Wsᵀ,
apply the gates (shared scalar math in activations.py) and run backwards for the gate gradients.
Conventions (lengths, reverse, truncate, clip) as in ``elman_cpu.py``; the per-step clipping acts
on the whole backpropagated state gradient (dL/dh_t, dL/dc_t). Twins: ``lstm_cuda.py``.
"""
import numpy as np
from numba import njit

from . import activations
from .scalar import compile_scalar_functions

_scalar = compile_scalar_functions(activations, njit(cache=True))
lstm_pointwise = _scalar.lstm_pointwise
lstm_pointwise_backward = _scalar.lstm_pointwise_backward
position = _scalar.position
clip_scale = _scalar.clip_scale


@njit(cache=True)
def forward_recurrence(U, WsT, H0, C0, lengths, reverse, Hs, Cs):
    """U      [T,B,4H] gate pre-activations from the inputs; overwritten with the gates (i, f, g, o)
    WsT    [H,4H]   Wsᵀ, contiguous
    H0, C0 [B,H]    initial hidden and cell state
    lengths [B], reverse: as elman_cpu
    Hs, Cs [T,B,H]  out: hidden and cell states
    """
    T, B, G = U.shape
    H = G // 4
    one = U.dtype.type(1.0)
    h = H0.copy()
    c = C0.copy()
    rec = np.empty((B, G), dtype=U.dtype)
    for i in range(T):
        np.dot(h, WsT, rec)
        for b in range(B):
            if i < lengths[b]:
                t = position(i, lengths[b], reverse)
                for j in range(H):
                    gi, gf, gg, go, cj, hj = lstm_pointwise(
                        U[t, b, j] + rec[b, j], U[t, b, H + j] + rec[b, H + j],
                        U[t, b, 2 * H + j] + rec[b, 2 * H + j], U[t, b, 3 * H + j] + rec[b, 3 * H + j],
                        c[b, j], one)
                    U[t, b, j] = gi
                    U[t, b, H + j] = gf
                    U[t, b, 2 * H + j] = gg
                    U[t, b, 3 * H + j] = go
                    Cs[t, b, j] = cj
                    Hs[t, b, j] = hj
                    c[b, j] = cj
                    h[b, j] = hj
            else:
                for j in range(H):
                    Hs[i, b, j] = H0[b, j] if reverse else h[b, j]
                    Cs[i, b, j] = C0[b, j] if reverse else c[b, j]


@njit(cache=True)
def backward_recurrence(dH_out, Ws, G, Hs, Cs, C0, lengths, reverse, truncate, clip, dG, dH0, dC0):
    """dH_out [T,B,H]  dL/dh_t through the output of step t alone; used as scratch (overwritten)
    Ws      [4H,H]
    G       [T,B,4H] gates saved by forward; Hs, Cs [T,B,H] states; C0 [B,H]
    lengths, reverse, truncate, clip: as elman_cpu
    dG      [T,B,4H] out: gradients of the gate pre-activations; may be the same array as G
    dH0, dC0 [B,H]   out: dL/dh0, dL/dc0
    """
    T, B, Gs = G.shape
    H = Gs // 4
    one = G.dtype.type(1.0)
    last = np.zeros((B, Gs), dtype=G.dtype)  # dG of the later step
    rec = np.zeros((B, H), dtype=G.dtype)  # last Ws
    dcn = np.zeros((B, H), dtype=G.dtype)  # dL/dc_t through c_{t+1}
    for i in range(T - 1, -1, -1):
        if truncate > 0 and (i + 1) % truncate == 0:
            rec[:] = 0
            dcn[:] = 0
        else:
            np.dot(last, Ws, rec)
        for b in range(B):
            if i < lengths[b]:
                t = position(i, lengths[b], reverse)
                tp = position(i - 1, lengths[b], reverse)
                sumsq = one - one
                for j in range(H):
                    dh = dH_out[t, b, j] + rec[b, j]
                    dH_out[t, b, j] = dh
                    sumsq += dh * dh + dcn[b, j] * dcn[b, j]
                scale = clip_scale(sumsq, clip, one)
                for j in range(H):
                    gf = G[t, b, H + j]
                    c_prev = C0[b, j] if i == 0 else Cs[tp, b, j]
                    di, df, dg, do, dc = lstm_pointwise_backward(
                        dH_out[t, b, j] * scale, dcn[b, j] * scale, G[t, b, j], gf, G[t, b, 2 * H + j],
                        G[t, b, 3 * H + j], Cs[t, b, j], c_prev, one)
                    dG[t, b, j] = di
                    dG[t, b, H + j] = df
                    dG[t, b, 2 * H + j] = dg
                    dG[t, b, 3 * H + j] = do
                    last[b, j] = di
                    last[b, H + j] = df
                    last[b, 2 * H + j] = dg
                    last[b, 3 * H + j] = do
                    dcn[b, j] = dc * gf
            else:
                for m in range(Gs):
                    dG[i, b, m] = 0
                    last[b, m] = 0
                for j in range(H):
                    dcn[b, j] = 0
    np.dot(last, Ws, dH0)
    dC0[:] = dcn
