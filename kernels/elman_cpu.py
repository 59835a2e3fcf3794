"""Elman RNN recurrences on the CPU (``@njit``): the sequential part of forward and BPTT.

Everything that does not depend on the previous step (the input products, the output layer, the
weight-gradient sums over time) is one large matrix product done by the caller; these functions run
only the time loops, with the pointwise work (activation, derivative, clipping) fused in. Two
exceptions: ``forward_recurrence_from_input`` takes the input product too (for small D the blas
variant forms each step's in its time loop, ``FUSE_MAX_INPUT``), and ``backward_top`` runs the
whole backward of the top layer's direction, its products included (``takes_top``; CPU only, where
the caller's time chunks cost more in calls and in passes over memory than the products lose by
being formed in pieces). Same arguments, same order as the CUDA twins in ``elman_cuda.py``. Two ways
to split the work
(``cpu_variants.py``): per-thread shares of the batch with the time loop inside (``loops``), or
BLAS products per step for the whole share (``blas``); the functions at the bottom choose.

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

from . import activations, cache, cpu_variants, linalg_cpu, register_gemm  # noqa: F401 (cache: first)

_scalar = cpu_variants.compile_activations()
activate = _scalar.activate
derivative_from_output = _scalar.derivative_from_output
position = _scalar.position
passes = _scalar.passes
states_before = _scalar.states_before
clip_scale = _scalar.clip_scale


@njit(inline="always", **cpu_variants.JIT_OPTIONS)
def _activate_row(act, t, b, rec, q, S, prev, one):
    """S[t, b] = prev[q] = g1(rec[q]), one loop per activation: with the code a constant inside each
    loop the compiler vectorises it (a code read per element would keep it scalar). The callers add
    the input term into rec first, in a loop of their own: the engine passes S = U, and a loop
    reading U and writing S fails the compiler's overlap check and runs scalar (measured: forward at
    (B,T,H) = (256,100,64) on one thread, 4.7 ms with S = U against 2.4 ms with S apart)."""
    H = S.shape[2]
    if act == activations.TANH:
        for j in range(H):
            S[t, b, j] = prev[q, j] = activate(activations.TANH, rec[q, j], one)
    elif act == activations.RELU:
        for j in range(H):
            S[t, b, j] = prev[q, j] = activate(activations.RELU, rec[q, j], one)
    elif act == activations.SIGMOID:
        for j in range(H):
            S[t, b, j] = prev[q, j] = activate(activations.SIGMOID, rec[q, j], one)
    else:
        for j in range(H):
            S[t, b, j] = prev[q, j] = rec[q, j]


@njit(inline="always", **cpu_variants.JIT_OPTIONS)
def _scale_row(act, g, q, S, t, b, scale, last, delta, u):
    """delta[u, b] = last[q] = g[q] ⊙ g1'(a) · scale, g1'(a) written through S[t, b] = g1(a); one
    pass. ``act`` must be a constant here (``_scale_row_for``)."""
    H = S.shape[2]
    one = S.dtype.type(1.0)
    for k in range(H):
        delta[u, b, k] = last[q, k] = g[q, k] * scale * derivative_from_output(act, S[t, b, k], one)


@njit(inline="always", **cpu_variants.JIT_OPTIONS)
def _scale_row_for(act, g, q, S, t, b, scale, last, delta, u):
    """_scale_row with ``act`` made a constant in each branch. One loop per activation inside
    _scale_row, chosen there by the run-time code, ran ~10x slower (measured at H = 64: 42 against
    4 ns a row; the compiler seems to merge the near-identical loops into one it cannot vectorise)."""
    if act == activations.TANH:
        _scale_row(activations.TANH, g, q, S, t, b, scale, last, delta, u)
    elif act == activations.RELU:
        _scale_row(activations.RELU, g, q, S, t, b, scale, last, delta, u)
    elif act == activations.SIGMOID:
        _scale_row(activations.SIGMOID, g, q, S, t, b, scale, last, delta, u)
    else:
        _scale_row(activations.IDENTITY, g, q, S, t, b, scale, last, delta, u)


# The step and row functions are inlined into the kernels in Numba's IR (inline="always"): called as
# functions, each call with its dozen array arguments cost ~25-30 ns per row (measured at H = 128,
# one sequence: a row's pointwise work ~27 ns inlined, ~55 ns behind one call, ~85 behind two;
# backward at (B,T,H) = (1,1000,64) 0.23 -> 0.20 ms inlined). The rows past a sequence's end are
# not on that path: a second loop in the inlined step (even one never run) made the step ~5x slower
# (the forward pointwise step at (1,1000,64): 91 ns per step with it, 18 ns without), so they have a
# function of their own (``cpu_variants.past_end``), called only once a tile has such rows.


def _forward_loops(U, Ws, S0, lengths, reverse, act, S, tile, shares):
    """Each of ``shares`` threads runs a contiguous run of tiles of ``tile`` sequences, all of them
    one step at a time (``cpu_variants.share_of``); Ws [H,H] untransposed."""
    T, B, H = U.shape
    one = U.dtype.type(1.0)
    for share in prange(shares):
        lo, hi = cpu_variants.share_of(share, shares, B, tile)
        prev = S0[lo:hi].copy()  # each sequence's state after its last processed step
        rec = np.empty((tile, H), dtype=U.dtype)  # a tile's prev Wsᵀ
        shortest = lengths[lo:hi].min()
        for i in range(T):
            for first in range(lo, hi, tile):
                n = min(tile, hi - first)
                p = prev[first - lo:first - lo + n]
                cpu_variants.tile_products(Ws, p, n, rec)
                _forward_step(U, lengths, reverse, act, S, i, first, p, rec, n, one)
                if i >= shortest:
                    cpu_variants.past_end(S0, lengths, reverse, S, i, first, p, n)


def _forward_blas(U, WsT, S0, lengths, reverse, act, S, piece, shares):
    """Each of ``shares`` threads runs a contiguous slice of the batch, its step products as
    ``cpu_variants.products`` forms them for ``piece`` (Wsᵀ from ``transposed_for``)."""
    T, B, H = U.shape
    one = U.dtype.type(1.0)
    for share in prange(shares):
        first, end = cpu_variants.share_of(share, shares, B, 1)
        prev = S0[first:end].copy()  # each sequence's state after its last processed step
        rec = np.empty_like(prev)  # prev Wsᵀ
        shortest = lengths[first:end].min()
        for i in range(T):
            cpu_variants.products(prev, WsT, rec, piece)
            _forward_step(U, lengths, reverse, act, S, i, first, prev, rec, end - first, one)
            if i >= shortest:
                cpu_variants.past_end(S0, lengths, reverse, S, i, first, prev, end - first)


@njit(inline="always", **cpu_variants.JIT_OPTIONS)
def _forward_step(U, lengths, reverse, act, S, i, first, prev, rec, n, one):
    """Step i of sequences first..first+n-1 from their recurrent products rec[q] = prev[q] Wsᵀ (those
    not past their end)."""
    H = S.shape[2]
    for q in range(n):
        b = first + q
        L = lengths[b]
        if i < L:
            t = position(i, L, reverse)
            for j in range(H):
                rec[q, j] += U[t, b, j]
            _activate_row(act, t, b, rec, q, S, prev, one)


# Forward from the input (blas variant): each step's input product X_t Wxᵀ formed in the time loop,
# beside the recurrent one, instead of U = X Wxᵀ + bias for all steps first, a product bound by
# memory when D is small (it writes [T,B,H] from [T,B,D]). A step's input rows are gathered first
# (each sequence's own time index in the reverse direction). Forward alone, 2 threads, with U /
# fused, ms: (B,T,D,H) = (256,100,16,64) 1.71 (0.46 of it the product) / 1.27; (32,200,32,128) 1.48 /
# 1.27; (256,100,64,64) 2.34 / 1.75. Forward + BPTT, same process alternating: (256,100,16,64) 5.7-6.0
# / 5.2-5.6; (32,200,32,128) 4.79-4.88 / 4.69-4.77; but from D = 64 no gain or a loss:
# (256,100,64,64) 7.65-7.85 / 7.47-7.84, (64,100,64,256) 15.1-16.2 / 16.0-16.5, (64,50,128,128)
# 3.70-3.87 / 3.93-3.96, (16,50,128,512) 9.2-9.4 / 9.8, (64,100,512,512) 100 / 111-114; and the loops
# variant lost too ((1,1000,8,64) 0.97-0.99 / 1.00-1.01, tiles' dot products of length D). So fused
# for the blas variant while D <= FUSE_MAX_INPUT, and only from FUSE_MIN_SHARE sequences a thread: a
# step's products of a few rows cost more than their sums (forward + BPTT with the register-blocked
# products, one process alternating, with U / fused, ms: (1,1000,8,64) 0.90 / 1.00, (8,200,16,128)
# 1.97 / 2.02, (2,500,32,64) 0.82 / 0.84; with more rows fused still won: (32,200,32,128) 4.83 /
# 4.75, (256,100,16,64) 5.76 / 5.48).
FUSE_MAX_INPUT = 32
FUSE_MIN_SHARE = 8


@njit(**cpu_variants.JIT_OPTIONS)
def _input_rows(X, lengths, reverse, i, first, n, rows):
    """rows[q] = X[t, first + q] for q < n, t the time index of processing step i of that sequence;
    zeros past its end."""
    D = X.shape[2]
    zero = rows.dtype.type(0.0)
    for q in range(n):
        b = first + q
        L = lengths[b]
        if i < L:
            t = position(i, L, reverse)
            for k in range(D):
                rows[q, k] = X[t, b, k]
        else:
            for k in range(D):
                rows[q, k] = zero


@njit(inline="always", **cpu_variants.JIT_OPTIONS)
def _forward_step_input(xin, bias, lengths, reverse, act, S, i, first, prev, rec, n, one):
    """_forward_step with the input term xin[q] + bias (xin[q] = the step's input row Wxᵀ)."""
    H = S.shape[2]
    for q in range(n):
        b = first + q
        L = lengths[b]
        if i < L:
            for j in range(H):
                rec[q, j] += xin[q, j] + bias[j]
            _activate_row(act, position(i, L, reverse), b, rec, q, S, prev, one)


def _forward_blas_input(X, WxT, bias, WsT, S0, lengths, reverse, act, S, piece, shares):
    """_forward_blas from the input, both step products as ``cpu_variants.products`` forms them."""
    T, B, H = S.shape
    one = S.dtype.type(1.0)
    for share in prange(shares):
        first, end = cpu_variants.share_of(share, shares, B, 1)
        prev = S0[first:end].copy()
        rec = np.empty_like(prev)  # prev Wsᵀ
        xin = np.empty_like(prev)  # the input rows Wxᵀ
        rows = np.empty((end - first, X.shape[2]), dtype=S.dtype)
        shortest = lengths[first:end].min()
        for i in range(T):
            _input_rows(X, lengths, reverse, i, first, end - first, rows)
            cpu_variants.products(rows, WxT, xin, piece)
            cpu_variants.products(prev, WsT, rec, piece)
            _forward_step_input(xin, bias, lengths, reverse, act, S, i, first, prev, rec, end - first, one)
            if i >= shortest:
                cpu_variants.past_end(S0, lengths, reverse, S, i, first, prev, end - first)


def _backward_loops(dS_out, W, W_transposed, S, lengths, reverse, act, truncate, clip, delta, dS0, tile, shares):
    """As ``_forward_loops``, backwards in time; W, W_transposed from cpu_variants.backward_weight (Ws
    [H,H] or its transpose)."""
    T, B, H = S.shape
    for share in prange(shares):
        lo, hi = cpu_variants.share_of(share, shares, B, tile)
        last = np.zeros((hi - lo, H), dtype=S.dtype)  # delta of the step processed before (the later step)
        g = np.empty((tile, H), dtype=S.dtype)  # a tile's last Ws, then dL/dS_t
        shortest = lengths[lo:hi].min()
        for i in range(T - 1, -1, -1):
            flows = passes(i + 1, truncate)  # step i+1 starts a chunk of the truncation: nothing flows back
            for first in range(lo, hi, tile):
                n = min(tile, hi - first)
                la = last[first - lo:first - lo + n]
                if flows:
                    cpu_variants.backward_products(W, W_transposed, la, n, g)
                else:
                    g[:] = 0
                _backward_step(dS_out, S, lengths, reverse, act, clip, delta, i, first, la, g, n, 0)
                if i >= shortest:
                    cpu_variants.zero_past_end(lengths, i, first, n, delta, la)
        for first in range(lo, hi, tile):
            n = min(tile, hi - first)
            cpu_variants.backward_products(W, W_transposed, last[first - lo:first - lo + n], n, g)
            dS0[first:first + n] = g[:n]


def _backward_blas(dS_out, Ws, S, lengths, reverse, act, truncate, clip, delta, dS0, piece, shares):
    """Each of ``shares`` threads runs a contiguous slice of the batch, its step products as
    ``cpu_variants.products`` forms them for ``piece`` (Ws as it lies)."""
    T, B, H = S.shape
    for share in prange(shares):
        first, end = cpu_variants.share_of(share, shares, B, 1)
        last = np.zeros((end - first, H), dtype=S.dtype)  # delta of the step processed before
        g = np.zeros_like(last)  # last Ws, then dL/dS_t
        shortest = lengths[first:end].min()
        for i in range(T - 1, -1, -1):
            if not passes(i + 1, truncate):
                g[:] = 0  # step i+1 starts a chunk: no gradient flows back across it
            else:
                cpu_variants.products(last, Ws, g, piece)
            _backward_step(dS_out, S, lengths, reverse, act, clip, delta, i, first, last, g, end - first, 0)
            if i >= shortest:
                cpu_variants.zero_past_end(lengths, i, first, end - first, delta, last)
        cpu_variants.products(last, Ws, dS0[first:end], piece)


@njit(inline="always", **cpu_variants.JIT_OPTIONS)
def _backward_step(dS_out, S, lengths, reverse, act, clip, delta, i, first, last, g, n, offset):
    """Step i (backwards) of sequences first..first+n-1 from g[q] = (the later step's delta) Ws;
    writes their deltas into ``delta`` and ``last`` (those not past their end). dS_out and delta
    hold time t in their row t - ``offset`` (0: all of the time)."""
    H = S.shape[2]
    one = S.dtype.type(1.0)
    for q in range(n):
        b = first + q
        L = lengths[b]
        if i >= L:
            continue
        t = position(i, L, reverse)
        sumsq = one - one
        for k in range(H):
            g[q, k] += dS_out[t - offset, b, k]
            sumsq += g[q, k] * g[q, k]
        _scale_row_for(act, g, q, S, t, b, clip_scale(sumsq, clip, one), last, delta, t - offset)


# One sequence (B = 1): the whole backward of the top layer's direction in one call. The engine's
# time chunks (``engine.time_chunks``) keep the [T,B,H] gradient from being whole, but each costs a
# dozen calls from Python (~40-60 µs at (B,T,D,H) = (1,1000,8,64), where a chunk's recurrence takes
# ~50), and its products wait for its recurrence. Here the kernel runs blocks of SEQUENCE_BLOCK_BYTES
# of that gradient: a block's dL/dS_t formed from dZ Wy and its steps run on one thread while the
# block before's products (dWs, dWx, dL/dx, the bias sums) are formed on another. On one thread the
# products wait their turn, which loses where they are large: so there only up to H =
# SEQUENCE_ONE_THREAD_MAX_HIDDEN. Forward + BPTT, tanh, the engine's chunks / this (``takes_top``
# switched in one process, alternating), ms: on 2 threads (1,1000,8,64) 0.858 / 0.636, (1,200,32,128)
# 0.764 / 0.649, (1,50,128,128) 0.354 / 0.324, (1,100,64,256) 1.21 / 1.08, (1,1000,64,256) 10.1 / 8.4,
# (1,50,128,512) 2.42 / 2.23, (1,500,32,512) 15.0 / 13.4; on 1 thread (1,1000,8,64) 0.859 / 0.671,
# (1,100,64,256) 0.99 / 0.97, (1,1000,64,256) 10.5 / 10.2, (1,50,128,512) 2.44 / 2.57, (1,500,32,512)
# 13.3 / 14.4. Blocks of 8, 16, 32, 64, 128 KiB, 2 threads: (1,1000,8,64) 0.605 0.558 0.561 0.569 0.592
# ms, (1,200,32,128) 0.486 0.463 0.461 0.470 0.520, (1,100,64,128) 0.374 0.372 0.361 0.406 0.392.
SEQUENCE_BLOCK_BYTES = 1 << 15
SEQUENCE_ONE_THREAD_MAX_HIDDEN = 256


@njit(inline="always", **cpu_variants.JIT_OPTIONS)
def _sequence_block(j, block, L, reverse):
    """(lo, hi, t0): block j's processing steps lo..hi-1, the latest block first (j = 0), and the
    first of its times t0..t0+hi-lo-1."""
    hi = L - j * block
    lo = max(0, hi - block)
    return lo, hi, position(hi - 1 if reverse else lo, L, reverse)  # the last step processed in reverse


@njit(**cpu_variants.JIT_OPTIONS)
def _sequence_steps(dZ, Wy, W, transposed, loops, S, lengths, reverse, act, truncate, clip, piece, lo, hi, t0, D,
                    last, g):
    """Processing steps hi-1 down to lo of the one sequence (times t0..): D's rows take dZ Wy, then
    the deltas; last and g carry the recurrence from block to block."""
    linalg_cpu.gemm(dZ[t0:t0 + hi - lo], False, Wy, D[:hi - lo, 0], 0.0)
    for i in range(hi - 1, lo - 1, -1):
        if not passes(i + 1, truncate):
            g[:] = 0  # step i+1 starts a chunk of the truncation: no gradient flows back across it
        elif loops:
            cpu_variants.backward_products(W, transposed, last, 1, g)
        else:
            cpu_variants.products(last, W, g, piece)
        _backward_step(D, S, lengths, reverse, act, clip, D, i, 0, last, g, 1, t0)


@njit(**cpu_variants.JIT_OPTIONS)
def _sequence_products(S, S0, X, Wx, reverse, t0, n, D, first, sums, dWs, dWx, dX, add_dX):
    """The sums over the deltas of times t0..t0+n-1 in D (``_sequence_steps``): dWs, dWx (written by
    the ``first`` block, added to after), dX's rows, the bias sums."""
    rows = D[:n, 0]
    for u in range(n):
        for k in range(rows.shape[1]):
            sums[k] += rows[u, k]
    beta = 0.0 if first else 1.0
    lo, a, b = states_before(t0, n, S.shape[0], reverse)
    if lo < 0 or lo + n > S.shape[0]:
        u = n - 1 if lo + n > S.shape[0] else 0
        linalg_cpu.gemm(rows[u:u + 1], True, S0, dWs, beta)
        beta = 1.0
    linalg_cpu.gemm(rows[a - lo:b - lo], True, S[a:b, 0], dWs, beta)
    linalg_cpu.gemm(rows, True, X[t0:t0 + n], dWx, 0.0 if first else 1.0)
    linalg_cpu.gemm(rows, False, Wx, dX[t0:t0 + n], 1.0 if add_dX else 0.0)


def _backward_sequence(dZ, Wy, W, transposed, loops, S, S0, X, Wx, lengths, reverse, act, truncate, clip, piece,
                       D, dWs, dWx, dbias, dX, add_dX, dS0):
    """The backward recurrence of one sequence with the products of ``backward_top``; its step
    products as ``_backward_loops`` forms them (``loops``; W, transposed from backward_weight) or
    ``_backward_blas`` (W = Ws as it lies, piece); dZ [T,O], X and dX [T,D] (the sequence's rows), S
    [T,1,H]; D [2,block,1,H]: the blocks take turns in its two halves, one block's steps run on one
    thread while the one before's products are formed on another (in turn on one thread alone)."""
    H = S.shape[2]
    L = lengths[0]
    block = D.shape[1]
    last = np.zeros((1, H), dtype=S.dtype)  # delta of the step processed before
    g = np.zeros((1, H), dtype=S.dtype)  # last Ws, then dL/dS_t
    sums = np.zeros(H)
    if not add_dX:
        dX[L:] = 0  # past the sequence's end: no gradient
    blocks = -(-L // block)  # blocks of processing steps, the latest first
    for stage in range(blocks + 1):
        for part in prange(2):
            if part == 0 and stage < blocks:
                lo, hi, t0 = _sequence_block(stage, block, L, reverse)
                _sequence_steps(dZ, Wy, W, transposed, loops, S, lengths, reverse, act, truncate, clip, piece,
                                lo, hi, t0, D[stage % 2], last, g)
            elif part == 1 and stage > 0:
                lo, hi, t0 = _sequence_block(stage - 1, block, L, reverse)
                _sequence_products(S, S0, X, Wx, reverse, t0, hi - lo, D[(stage - 1) % 2], stage == 1, sums,
                                   dWs, dWx, dX, add_dX)
    for k in range(H):
        dbias[k] = sums[k]
    if loops:
        cpu_variants.backward_products(W, transposed, last, 1, dS0)
    else:
        cpu_variants.products(last, W, dS0, piece)


# A block's products in _backward_shares: dWs | dWx as one product of the deltas with the states
# before their steps and the inputs side by side in one buffer, and dL/dx register-blocked on Wx
# packed where it can (float32, D a multiple of register_gemm.COLUMNS). Measured on one core, a block
# of m rows at H = 512, D = 128, separately through BLAS (dWs, dWx, dx) / so, µs: m = 128 807 / 743,
# 96 605 / 558, 64 430 / 381, 32 247 / 206 (dx alone at m = 128: 135 / 98; dWs | dWx 520 against 426
# + 130). Forward + BPTT against 5a48a81 (tanh, 2 threads, benchmarks/ab_commits.py, 7 rounds):
# (B,T,D,H) = (128,50,128,512) 1.02x, (64,50,128,512) 1.06x, (32,200,32,128) 1.03x,
# (4,1000,64,256) 1.07x, (16,100,64,256) 1.01x.
@njit(inline="always", **cpu_variants.JIT_OPTIONS)
def _input_products(deltas, Wx, register, dinputs, add):
    """dinputs = deltas Wx (+= with ``add``): register-blocked on Wx packed (``register``;
    ``backward_top`` says when), else through BLAS."""
    if register:
        register_gemm.product(deltas, Wx, dinputs, add)
    else:
        linalg_cpu.gemm(deltas, False, Wx, dinputs, 1.0 if add else 0.0)


def _backward_shares(dZ, Wy, Ws, S, S0, X, Wx, register, lengths, reverse, act, truncate, clip, piece, shares, block,
                     R, Dd, Sx, Ox, partial, sums, dX, add_dX, dS0):
    """The backward recurrence of ``_backward_blas`` with the products of ``backward_top`` for many
    sequences: each of ``shares`` threads runs a slice of the batch; at every step it forms its
    rows of dL/dS_t from dZ_t Wy and their deltas, and keeps the deltas and, side by side, the states
    before the step and the inputs in buffers of its own; every ``block`` steps it forms from them,
    while they are in cache, its share of the sums dWs | dWx (one product) and its rows of dL/dx
    (``block`` 1: at every step, from where the rows lie, the buffers unused and empty). Every
    sequence's processing step i must be one time (the forward direction, or every length T).
    Wx as ``_input_products`` takes it for ``register``. R [1,B,H]: the step's rows, each thread its
    own; Dd [shares, block·rows, H], Sx [shares, block·rows, H+D] and Ox [shares, block·rows, D]:
    the deltas, states before | inputs and dL/dx of a block; partial [shares, H, H+D]: each thread's
    sums dWs | dWx, added up by ``_add_shares``; sums [shares, H] float64, the bias sums."""
    T, B, H = S.shape
    D = X.shape[2]
    for share in prange(shares):
        first, end = cpu_variants.share_of(share, shares, B, 1)
        n = end - first
        last = np.zeros((n, H), dtype=S.dtype)  # delta of the step processed before
        g = np.zeros_like(last)  # last Ws, then dL/dS_t
        acc = np.zeros(H)
        rows = R[0, first:end]
        deltas, joined, dinputs, to = Dd[share], Sx[share], Ox[share], partial[share]
        shortest = lengths[first:end].min()
        for hi in range(T, 0, -block):  # processing steps hi-1 down to lo
            lo = max(0, hi - block)
            for i in range(hi - 1, lo - 1, -1):
                t = position(i, T, reverse)  # every sequence's step i is one time
                linalg_cpu.gemm(dZ[t, first:end], False, Wy, rows, 0.0)
                if not passes(i + 1, truncate):
                    g[:] = 0  # step i+1 starts a chunk of the truncation: no gradient flows back across it
                else:
                    cpu_variants.products(last, Ws, g, piece)
                _backward_step(R, S, lengths, reverse, act, clip, R, i, first, last, g, n, t)
                if i >= shortest:
                    cpu_variants.zero_past_end(lengths, i, first, n, R, last, i)
                prev, a, b = states_before(t, 1, T, reverse)
                states = S[prev, first:end] if a < b else S0[first:end]
                for q in range(n):
                    for k in range(H):
                        acc[k] += rows[q, k]
                if block == 1:  # the step's products from where its rows lie
                    beta = 0.0 if i == T - 1 else 1.0
                    linalg_cpu.gemm(rows, True, states, to[:, :H], beta)
                    linalg_cpu.gemm(rows, True, X[t, first:end], to[:, H:], beta)
                    _input_products(rows, Wx, register, dX[t, first:end], add_dX)
                else:
                    u = (hi - 1 - i) * n
                    for q in range(n):
                        for k in range(H):
                            deltas[u + q, k] = rows[q, k]
                            joined[u + q, k] = states[q, k]
                        for k in range(D):
                            joined[u + q, H + k] = X[t, first + q, k]
            if block > 1:
                m = (hi - lo) * n
                linalg_cpu.gemm(deltas[:m], True, joined[:m], to, 0.0 if hi == T else 1.0)
                _input_products(deltas[:m], Wx, register, dinputs[:m], False)
                for i in range(hi - 1, lo - 1, -1):  # dinputs' rows to their times in dX
                    t = position(i, T, reverse)  # every sequence's step i is one time
                    u = (hi - 1 - i) * n
                    for q in range(n):
                        if add_dX:
                            for k in range(D):
                                dX[t, first + q, k] += dinputs[u + q, k]
                        else:  # dX unwritten before: not read (0 times a NaN left there is NaN)
                            for k in range(D):
                                dX[t, first + q, k] = dinputs[u + q, k]
        sums[share] = acc
        cpu_variants.products(last, Ws, dS0[first:end], piece)


@njit(parallel=True, **cpu_variants.JIT_OPTIONS)
def _add_shares(partial, dWs, dWx):
    """dWs | dWx = Σ_s partial[s] (``_backward_shares``), summed in the order of the shares."""
    H = dWs.shape[1]
    for i in prange(partial.shape[1]):
        for j in range(partial.shape[2]):
            total = partial[0, i, j]
            for s in range(1, partial.shape[0]):
                total += partial[s, i, j]
            if j < H:
                dWs[i, j] = total
            else:
                dWx[i, j - H] = total


_forward_kernels = {"loops": cpu_variants.compile_both(_forward_loops),
                    "blas": cpu_variants.compile_both(_forward_blas)}
_forward_input_kernels = cpu_variants.compile_both(_forward_blas_input)
_backward_kernels = {"loops": cpu_variants.compile_both(_backward_loops),
                     "blas": cpu_variants.compile_both(_backward_blas)}
_backward_sequence_kernels = cpu_variants.compile_both(_backward_sequence)
_backward_shares_kernels = cpu_variants.compile_both(_backward_shares)


def forward_recurrence(U, Ws, S0, lengths, reverse, act, S):
    """S_t = g1(U_t + S_{t-1} Wsᵀ) over each sequence's steps.

    U       [T,B,H]  Wx x_t + bx + bs for every step (computed before, in one product)
    Ws      [H,H]    contiguous
    S0      [B,H]    initial state
    lengths [B]      int32, 1..T
    reverse int      0 forward, 1 reverse direction
    act     int      activation code of g1 (kernels/activations.py)
    S       [T,B,H]  out: the hidden states; may be the same array as U
    """
    _forward(U, Ws, S0, lengths, reverse, act, S, *cpu_variants.plan(U.shape[1], Ws))


def _forward(U, Ws, S0, lengths, reverse, act, S, variant, tile, shares):
    """forward_recurrence on the plan (cpu_variants.plan) its caller made."""
    kernel = cpu_variants.pick(_forward_kernels[variant], shares)
    if variant == "loops":
        kernel(U, Ws, S0, lengths, reverse, act, S, tile, shares)
    else:
        kernel(U, cpu_variants.transposed_for(Ws, tile), S0, lengths, reverse, act, S, tile, shares)


def forward_recurrence_from_input(X, Wx, bias, Ws, S0, lengths, reverse, act, S):
    """S_t = g1(X_t Wxᵀ + bias + S_{t-1} Wsᵀ): ``forward_recurrence`` with the input product of
    each step formed inside the time loop (blas variant, D <= FUSE_MAX_INPUT, FUSE_MIN_SHARE
    sequences a thread or more), else as one product before it (U written into S).

    X       [T,B,D]  the layer's input, contiguous
    Wx      [H,D]    contiguous
    bias    [H]      bx + bs, or None
    Ws, S0, lengths, reverse, act as ``forward_recurrence``; S [T,B,H] out, apart from X
    """
    T, B, D = X.shape
    H = Ws.shape[1]
    variant, piece, shares = cpu_variants.plan(B, Ws)
    if variant != "blas" or D > FUSE_MAX_INPUT or -(-B // shares) < FUSE_MIN_SHARE:
        linalg_cpu.matmul(X.reshape(T * B, D), Wx, trans_b=True, bias=bias, out=S.reshape(T * B, H))
        _forward(S, Ws, S0, lengths, reverse, act, S, variant, piece, shares)  # the plan made once
        return
    bias = np.zeros(H, dtype=S.dtype) if bias is None else bias
    WxT, WsT = (cpu_variants.transposed_for(W, piece) for W in (Wx, Ws))
    cpu_variants.pick(_forward_input_kernels, shares)(X, WxT, bias, WsT, S0, lengths, reverse, act, S, piece, shares)


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
    variant, tile, shares = cpu_variants.plan(S.shape[1], Ws)
    kernel = cpu_variants.pick(_backward_kernels[variant], shares)
    if variant == "loops":
        kernel(dS_out, *cpu_variants.backward_weight(Ws, tile), S, lengths, reverse, act, truncate, clip, delta, dS0,
               tile, shares)
    else:
        kernel(dS_out, cpu_variants.blas_backward_weight(Ws, tile, S), S, lengths, reverse, act, truncate, clip,
               delta, dS0, tile, shares)


def takes_top(S, Ws, Wx, uniform):
    """Whether ``backward_top`` takes the top layer's direction with saved states S [T,B,H] and Ws,
    Wx; ``uniform``: whether every sequence's processing step i is one time (the forward direction,
    or every length T). One sequence on one thread up to H = SEQUENCE_ONE_THREAD_MAX_HIDDEN; more,
    where uniform, when the blas variant runs them (``cpu_variants.plan``) in shares of
    SHARES_MIN_ROWS sequences or more and the kernel's buffers weigh at most SHARES_MEMORY_SHARE of
    the states (``_shares_plan``)."""
    T, B, H = S.shape
    if B == 1:
        return H <= SEQUENCE_ONE_THREAD_MAX_HIDDEN or get_num_threads() > 1
    if not uniform:
        return False
    variant, _, _, rows, _, extra = _shares_plan(T, B, H, Wx.shape[1], Ws, S.itemsize)
    return variant == "blas" and rows >= SHARES_MIN_ROWS and extra <= SHARES_MEMORY_SHARE * S.nbytes


# Many sequences: ``_backward_shares``. The engine's time chunks cost a dozen calls from Python each
# and a pass over memory for dL/dS_t = dZ Wy and for the bias sums (forward + BPTT at (B,T,D,H) =
# (256,100,16,64), in one process: 6.46 ms in one chunk, 7.05 in four). Here the products of a share
# run on blocks of SHARES_BLOCK_ROWS rows (steps x the share's sequences; at every step once a share
# has that many), whose buffers hold at most SHARES_BUFFER_SHARE of the states' bytes; and the kernel
# runs only where its buffers and the partial sums of the threads after the first weigh at most
# SHARES_MEMORY_SHARE of them. Measured, forward + BPTT, tanh, one process alternating, the engine's
# chunks against this (live peak over the lower bound), 2 threads: (B,T,D,H) = (256,100,16,64) 1.216x
# (1.26 / 1.07), (32,200,32,128) 1.148x, (64,100,64,256) 1.031x, (128,50,128,512) 1.092x,
# (64,100,512,512) 1.066x (1.17 / 1.18), (16,50,128,128) 1.473x (1.22 / 1.26), (64,50,128,128) 1.320x,
# (16,100,64,256) 1.333x (1.31 / 1.37), (16,1000,64,256) 0.995x, (8,500,64,256) 1.140x,
# (4,1000,64,256) 1.073x, (64,50,128,512) 1.067x (1.33 / 1.36), (4,200,64,128) 1.496x (1.27 / 1.34),
# (16,50,128,512) not taken (its sums would weigh 0.8 of the states); 1 thread: (256,100,16,64)
# 1.038x, (32,200,32,128) 1.003x, (64,100,64,256) 1.002x, (128,50,128,512) 1.031x, (16,1000,64,256)
# 1.030x, (4,1000,64,256) 0.998x. Products at every step for shares of fewer rows lost where T is
# long (a call per product per step: (16,1000,64,256) 0.918x, (8,500,64,256) 0.941x); blocks of 256
# or 512 rows gained little more than 128 and weighed more (at (16,100,64,256) live 1.56x in blocks
# of 128 rows without the buffers' limit, 1.83x in 256, 2.37x in 512).
SHARES_MIN_ROWS = 2
SHARES_BLOCK_ROWS = 128
SHARES_BUFFER_SHARE = 0.125
SHARES_MEMORY_SHARE = 0.5


def _shares_plan(T, B, H, D, Ws, itemsize):
    """(variant, piece, shares, rows, block, extra) of ``_backward_shares`` over T steps of B sequences
    with H units and D inputs: the plan of the recurrence (``cpu_variants.plan``), the most sequences
    a share has, the steps of a block of products (1: at every step, without buffers) and the bytes
    of the buffers it needs."""
    variant, piece, shares = cpu_variants.plan(B, Ws)
    rows = -(-B // shares)
    per_row = shares * 2 * (H + D) * itemsize  # a block row in the three buffers of every share
    fit = min(SHARES_BLOCK_ROWS, int(SHARES_BUFFER_SHARE * T * B * H * itemsize) // per_row)
    block = max(1, min(T, fit // rows))
    # with the sums dWs | dWx of the threads after the first (the first's take the place of dWs and dWx,
    # made after the kernel: ``backward_top``) and, at most, a packed copy of Wx
    extra = itemsize * (B * H + (shares - 1) * H * (H + D) + H * D) + (per_row * block * rows if block > 1 else 0)
    return variant, piece, shares, rows, block, extra


def backward_top(dZ, Wy, Ws, Wx, S, S0, X, lengths, reverse, act, truncate, clip, dbias, dX, add_dX, dS0):
    """The whole backward of the top layer's direction (``takes_top``): the recurrence of
    ``backward_recurrence`` with dS_out = dZ Wy, and the sums the engine forms from its deltas,
    without a [T,B,H] array. Returns (dWs, dWx) [H,H], [H,D]: Σ_t delta_tᵀ S_prev(t), Σ_t delta_tᵀ x_t
    (made here: for many sequences once the threads' own sums are formed, which take their place
    meanwhile).

    dZ      [T,B,O]  dL/dZ
    Wy      [O,H]    this direction's columns of the output weight (rows of unit stride)
    Ws, Wx  [H,H], [H,D]
    S       [T,B,H]  hidden states saved by forward; S0 [B,H]; X [T,B,D] the layer's input
    lengths, reverse, act, truncate, clip as ``backward_recurrence``
    dbias   [H]      out: Σ_t delta_t
    dX      [T,B,D]  out: delta Wx, or added to it with ``add_dX``
    dS0     [B,H]    out: dL/dS0
    """
    T, B, H = S.shape
    if B > 1:
        D = X.shape[2]
        variant, piece, shares, rows, block, _ = _shares_plan(T, B, H, D, Ws, S.itemsize)
        # NumPy's buffers, so that the benchmark's count of live buffers sees them
        held = block * rows if block > 1 else 0
        R = np.empty((1, B, H), dtype=S.dtype)
        Dd = np.empty((shares, held, H), dtype=S.dtype)
        Sx = np.empty((shares, held, H + D), dtype=S.dtype)
        Ox = np.empty((shares, held, D), dtype=S.dtype)
        partial = np.empty((shares, H, H + D), dtype=S.dtype)
        sums = np.empty((shares, H))
        register = cpu_variants.uses_register(Wx)
        cpu_variants.pick(_backward_shares_kernels, shares)(
            dZ, Wy, cpu_variants.blas_backward_weight(Ws, piece, S), S, S0, X,
            register_gemm.packed(Wx) if register else Wx, register, lengths, reverse, act, truncate, clip, piece,
            shares, block, R, Dd, Sx, Ox, partial, sums, dX, add_dX, dS0)
        del R, Dd, Sx, Ox  # before dWs and dWx are made
        dWs, dWx = np.empty_like(Ws), np.empty_like(Wx)
        _add_shares(partial, dWs, dWx)
        dbias[...] = sums.sum(axis=0)
        return dWs, dWx
    variant, piece, _ = cpu_variants.plan(1, Ws)
    if variant == "loops":
        W, transposed = cpu_variants.backward_weight(Ws, piece)
    else:
        W, transposed = cpu_variants.blas_backward_weight(Ws, piece, S), False
    block = max(1, min(T, SEQUENCE_BLOCK_BYTES // (H * S.itemsize)))
    D = np.empty((2, block, 1, H), dtype=S.dtype)  # NumPy's, so that the benchmark's count of live buffers sees it
    kernel = cpu_variants.pick(_backward_sequence_kernels, min(2, get_num_threads()))
    dWs, dWx = np.empty_like(Ws), np.empty_like(Wx)
    kernel(dZ[:, 0], Wy, W, transposed, variant == "loops", S, S0, X[:, 0], Wx, lengths, reverse, act, truncate, clip,
           piece, D, dWs, dWx, dbias, dX[:, 0], add_dX, dS0)
    return dWs, dWx
