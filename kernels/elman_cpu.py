"""Elman RNN recurrences on the CPU (``@njit``): the sequential part of forward and BPTT.

Everything that does not depend on the previous step (the input products, the output layer, the
weight-gradient sums over time) is one large matrix product done by the caller; these functions run
only the time loops, with the pointwise work (activation, derivative) fused in. Same arguments, same
order as the CUDA twins in ``elman_cuda.py``.
"""
import numpy as np
from numba import njit

from . import activations
from .scalar import compile_scalar_functions

_scalar = compile_scalar_functions(activations, njit(cache=True))
activate = _scalar.activate
derivative_from_output = _scalar.derivative_from_output


@njit(cache=True)
def forward_recurrence(U, WsT, S0, act, S):
    """S_t = g1(U_t + S_{t-1} Wsᵀ), t = 1..T.

    U    [T,B,H]  Wx x_t + bx + bs for every step (computed before, in one product)
    WsT  [H,H]    Wsᵀ, contiguous
    S0   [B,H]    initial state
    act  int      activation code of g1 (kernels/activations.py)
    S    [T,B,H]  out: the hidden states S_1..S_T; may be the same array as U
    """
    T, B, H = U.shape
    one = U.dtype.type(1.0)
    rec = np.empty((B, H), dtype=U.dtype)  # S_{t-1} Wsᵀ
    for t in range(T):
        if t == 0:
            np.dot(S0, WsT, rec)
        else:
            np.dot(S[t - 1], WsT, rec)
        for b in range(B):
            for j in range(H):
                S[t, b, j] = activate(act, U[t, b, j] + rec[b, j], one)


@njit(cache=True)
def backward_recurrence(dS_out, Ws, S, act, delta):
    """delta_t = (dS_out_t + delta_{t+1} Ws) ⊙ g1'(S_t), t = T..1, with delta_{T+1} = 0.

    delta_t is dL/d(pre-activation of step t); the seed's sum over earlier steps of dE_N/dWs is
    Σ_t delta_tᵀ S_{t-1}, formed by the caller as one product once this loop has run.

    dS_out [T,B,H]  dL/dS_t through the output of step t alone (dZ_t Wy)
    Ws     [H,H]
    S      [T,B,H]  hidden states saved by forward
    act    int      activation code of g1
    delta  [T,B,H]  out; may be the same array as dS_out
    """
    T, B, H = S.shape
    one = S.dtype.type(1.0)
    rec = np.zeros((B, H), dtype=S.dtype)  # delta_{t+1} Ws
    for t in range(T - 1, -1, -1):
        if t < T - 1:
            np.dot(delta[t + 1], Ws, rec)
        for b in range(B):
            for k in range(H):
                delta[t, b, k] = (dS_out[t, b, k] + rec[b, k]) * derivative_from_output(act, S[t, b, k], one)
