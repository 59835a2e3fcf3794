"""Elman RNN recurrences on the CPU (``@njit``): the sequential part of forward and BPTT.

Everything that does not depend on the previous step (the input products, the output layer, the
weight-gradient sums over time) is one large matrix product done by the caller; these functions run
only the time loops, with the pointwise work (activation, derivative, clipping) fused in. Same
arguments, same order as the CUDA twins in ``elman_cuda.py``. Two ways to split the work
(``cpu_variants.py``): per-thread shares of the batch with the time loop inside (``loops``), or
one batched BLAS product per step (``blas``); the functions at the bottom choose.

Conventions shared by every cell's kernels:
- ``lengths [B]``: sequence b has steps 0..lengths[b]-1; ``reverse`` (0/1) runs each sequence from its
  own last step back to 0. Past a sequence's end the state does not change: the forward direction
  repeats its final state there, the reverse direction holds its initial state, and no gradient flows.
- ``truncate`` k > 0: gradient does not flow back across processing steps that start a chunk of k
  (k, 2k, ...); 0 means full BPTT. ``clip`` c > 0: at every step, the backpropagated state gradient
  of each sequence is rescaled to norm c when its norm exceeds c (the article's clipping); 0 is off.
"""
import numpy as np
from numba import get_num_threads, njit, prange

from . import activations, cpu_variants
from .scalar import compile_scalar_functions

_scalar = compile_scalar_functions(activations, njit(**cpu_variants.JIT_OPTIONS))
activate = _scalar.activate
derivative_from_output = _scalar.derivative_from_output
position = _scalar.position
clip_scale = _scalar.clip_scale


@njit(**cpu_variants.JIT_OPTIONS)
def activate_vector(act, v, one):
    """v[:] = g1(v) in place, one loop per activation: with the code a constant inside each loop the
    compiler vectorises it (a code read per element would keep it scalar)."""
    if act == activations.TANH:
        for j in range(v.size):
            v[j] = activate(activations.TANH, v[j], one)
    elif act == activations.RELU:
        for j in range(v.size):
            v[j] = activate(activations.RELU, v[j], one)
    elif act == activations.SIGMOID:
        for j in range(v.size):
            v[j] = activate(activations.SIGMOID, v[j], one)


@njit(**cpu_variants.JIT_OPTIONS)
def scale_by_derivative(act, g, s, scale, out):
    """out[:] = g ⊙ g1'(a) · scale with g1'(a) written through s = g1(a); one loop per activation."""
    one = s.dtype.type(1.0)
    if act == activations.TANH:
        for k in range(g.size):
            out[k] = g[k] * scale * derivative_from_output(activations.TANH, s[k], one)
    elif act == activations.RELU:
        for k in range(g.size):
            out[k] = g[k] * scale * derivative_from_output(activations.RELU, s[k], one)
    elif act == activations.SIGMOID:
        for k in range(g.size):
            out[k] = g[k] * scale * derivative_from_output(activations.SIGMOID, s[k], one)
    else:
        for k in range(g.size):
            out[k] = g[k] * scale


@njit(parallel=True, **cpu_variants.JIT_OPTIONS)
def _forward_loops(U, Ws, S0, lengths, reverse, act, S, shares):
    """Each of ``shares`` threads runs whole sequences; Ws [H,H] (not transposed: row j's dot product
    with the previous state reads contiguous memory)."""
    T, B, H = U.shape
    one = U.dtype.type(1.0)
    for share in prange(shares):
        prev = np.empty(H, dtype=U.dtype)
        for b in range(share, B, shares):
            L = lengths[b]
            prev[:] = S0[b]
            for i in range(T):
                if i < L:
                    t = position(i, L, reverse)
                    out = S[t, b]
                    for j in range(H):
                        acc = U[t, b, j]
                        for k in range(H):
                            acc += Ws[j, k] * prev[k]
                        out[j] = acc
                    activate_vector(act, out, one)
                    prev[:] = out
                else:
                    S[i, b] = S0[b] if reverse else prev


@njit(**cpu_variants.JIT_OPTIONS)
def _forward_blas(U, WsT, S0, lengths, reverse, act, S):
    """One time loop; each step one BLAS product for the whole batch (BLAS's own threads)."""
    T, B, H = U.shape
    one = U.dtype.type(1.0)
    prev = S0.copy()  # [B,H] state after each sequence's last processed step
    rec = np.empty((B, H), dtype=U.dtype)  # prev Wsᵀ
    for i in range(T):
        np.dot(prev, WsT, rec)
        for b in range(B):
            L = lengths[b]
            if i < L:
                t = position(i, L, reverse)
                out = S[t, b]
                for j in range(H):
                    out[j] = U[t, b, j] + rec[b, j]
                activate_vector(act, out, one)
                prev[b] = out
            else:
                S[i, b] = S0[b] if reverse else prev[b]


@njit(parallel=True, **cpu_variants.JIT_OPTIONS)
def _backward_loops(dS_out, WsT, S, lengths, reverse, act, truncate, clip, delta, dS0, shares):
    """Each of ``shares`` threads runs whole sequences; WsT [H,H] = Wsᵀ (row k's dot product with the
    later step's delta reads contiguous memory)."""
    T, B, H = S.shape
    one = S.dtype.type(1.0)
    for share in prange(shares):
        last = np.empty(H, dtype=S.dtype)  # delta of the step processed before (the later step)
        g = np.empty(H, dtype=S.dtype)  # dL/dS_t
        for b in range(share, B, shares):
            L = lengths[b]
            last[:] = 0
            for i in range(T - 1, -1, -1):
                if i >= L:
                    delta[i, b] = 0
                    continue
                t = position(i, L, reverse)
                if truncate > 0 and (i + 1) % truncate == 0:  # step i+1 starts a chunk: nothing flows back
                    g[:] = dS_out[t, b]
                else:
                    for k in range(H):
                        acc = dS_out[t, b, k]
                        for j in range(H):
                            acc += WsT[k, j] * last[j]
                        g[k] = acc
                scale = one
                if clip > 0:
                    sumsq = one - one
                    for k in range(H):
                        sumsq += g[k] * g[k]
                    scale = clip_scale(sumsq, clip, one)
                scale_by_derivative(act, g, S[t, b], scale, last)
                delta[t, b] = last
            for k in range(H):
                acc = one - one
                for j in range(H):
                    acc += WsT[k, j] * last[j]
                dS0[b, k] = acc


@njit(**cpu_variants.JIT_OPTIONS)
def _backward_blas(dS_out, Ws, S, lengths, reverse, act, truncate, clip, delta, dS0):
    """One reverse time loop; each step one BLAS product for the whole batch."""
    T, B, H = S.shape
    one = S.dtype.type(1.0)
    last = np.zeros((B, H), dtype=S.dtype)  # delta of the step processed before (the later step)
    rec = np.zeros((B, H), dtype=S.dtype)  # last Ws, then dL/dS_t
    for i in range(T - 1, -1, -1):
        if truncate > 0 and (i + 1) % truncate == 0:
            rec[:] = 0  # step i+1 starts a chunk: no gradient flows back across it
        else:
            np.dot(last, Ws, rec)
        for b in range(B):
            L = lengths[b]
            if i < L:
                t = position(i, L, reverse)
                g = rec[b]
                for k in range(H):
                    g[k] += dS_out[t, b, k]
                scale = one
                if clip > 0:
                    sumsq = one - one
                    for k in range(H):
                        sumsq += g[k] * g[k]
                    scale = clip_scale(sumsq, clip, one)
                scale_by_derivative(act, g, S[t, b], scale, last[b])
                delta[t, b] = last[b]
            else:
                delta[i, b] = 0
                last[b] = 0
    np.dot(last, Ws, dS0)


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
    B = U.shape[1]
    if cpu_variants.choose(B, U.shape[2]) == "loops":
        _forward_loops(U, np.ascontiguousarray(WsT.T), S0, lengths, reverse, act, S, min(B, get_num_threads()))
    else:
        _forward_blas(U, WsT, S0, lengths, reverse, act, S)


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
    B = S.shape[1]
    if cpu_variants.choose(B, S.shape[2]) == "loops":
        _backward_loops(dS_out, np.ascontiguousarray(Ws.T), S, lengths, reverse, act, truncate, clip, delta, dS0,
                        min(B, get_num_threads()))
    else:
        _backward_blas(dS_out, Ws, S, lengths, reverse, act, truncate, clip, delta, dS0)
