"""Elman RNN recurrences on the CPU (``@njit``): the sequential part of forward and BPTT.

Everything that does not depend on the previous step (the input products, the output layer, the
weight-gradient sums over time) is one large matrix product done by the caller; these functions run
only the time loops, with the pointwise work (activation, derivative, clipping) fused in. Same
arguments, same order as the CUDA twins in ``elman_cuda.py``.

Conventions shared by every cell's kernels:
- ``lengths [B]``: sequence b has steps 0..lengths[b]-1; ``reverse`` (0/1) runs each sequence from its
  own last step back to 0. Past a sequence's end the state does not change: the forward direction
  repeats its final state there, the reverse direction holds its initial state, and no gradient flows.
- ``truncate`` k > 0: gradient does not flow back across processing steps that start a chunk of k
  (k, 2k, ...); 0 means full BPTT. ``clip`` c > 0: at every step, the backpropagated state gradient
  of each sequence is rescaled to norm c when its norm exceeds c (the article's clipping); 0 is off.
"""
import numpy as np
from numba import njit

from . import activations
from .scalar import compile_scalar_functions

_scalar = compile_scalar_functions(activations, njit(cache=True))
activate = _scalar.activate
derivative_from_output = _scalar.derivative_from_output
position = _scalar.position
clip_scale = _scalar.clip_scale


@njit(cache=True)
def forward_recurrence(U, WsT, S0, lengths, reverse, act, S):
    """S_t = g1(U_t + S_{t-1} Wsᵀ) over each sequence's steps.

    U       [T,B,H]  Wx x_t + bx + bs for every step (computed before, in one product)
    WsT     [H,H]    Wsᵀ, contiguous
    S0      [B,H]    initial state
    lengths [B]      int32, 1..T
    reverse int      0 forward, 1 reverse direction
    act     int      activation code of g1 (kernels/activations.py)
    S       [T,B,H]  out: the hidden states; may be the same array as U
    """
    T, B, H = U.shape
    one = U.dtype.type(1.0)
    prev = S0.copy()  # [B,H] state after each sequence's last processed step
    rec = np.empty((B, H), dtype=U.dtype)  # prev Wsᵀ
    for i in range(T):
        np.dot(prev, WsT, rec)
        for b in range(B):
            if i < lengths[b]:
                t = position(i, lengths[b], reverse)
                for j in range(H):
                    s = activate(act, U[t, b, j] + rec[b, j], one)
                    S[t, b, j] = s
                    prev[b, j] = s
            else:
                for j in range(H):
                    S[i, b, j] = S0[b, j] if reverse else prev[b, j]


@njit(cache=True)
def backward_recurrence(dS_out, Ws, S, lengths, reverse, act, truncate, clip, delta, dS0):
    """delta_t = (dS_out_t + delta_{t+1} Ws) ⊙ g1'(S_t), backwards over each sequence's steps.

    delta_t is dL/d(pre-activation of step t); the seed's sum over earlier steps of dE_N/dWs is
    Σ_t delta_tᵀ S_{t-1}, formed by the caller as one product once this loop has run.

    dS_out  [T,B,H]  dL/dS_t through the output of step t alone (dZ_t Wy)
    Ws      [H,H]
    S       [T,B,H]  hidden states saved by forward
    lengths, reverse, act as forward; truncate int (0 off), clip float (0 off)
    delta   [T,B,H]  out; may be the same array as dS_out
    dS0     [B,H]    out: dL/dS0
    """
    T, B, H = S.shape
    one = S.dtype.type(1.0)
    last = np.zeros((B, H), dtype=S.dtype)  # delta of the step processed before (the later step)
    rec = np.zeros((B, H), dtype=S.dtype)  # last Ws: the gradient reaching S_t through S_{t+1}
    g = np.empty(H, dtype=S.dtype)  # dL/dS_t of one sequence
    for i in range(T - 1, -1, -1):
        if truncate > 0 and (i + 1) % truncate == 0:
            rec[:] = 0  # step i+1 starts a chunk: no gradient flows back across it
        else:
            np.dot(last, Ws, rec)
        for b in range(B):
            if i < lengths[b]:
                t = position(i, lengths[b], reverse)
                sumsq = one - one
                for k in range(H):
                    g[k] = dS_out[t, b, k] + rec[b, k]
                    sumsq += g[k] * g[k]
                scale = clip_scale(sumsq, clip, one)
                for k in range(H):
                    d = g[k] * scale * derivative_from_output(act, S[t, b, k], one)
                    delta[t, b, k] = d
                    last[b, k] = d
            else:
                for k in range(H):
                    delta[i, b, k] = 0
                    last[b, k] = 0
    np.dot(last, Ws, dS0)
