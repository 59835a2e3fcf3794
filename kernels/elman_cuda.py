"""Elman RNN recurrences on the GPU (``@cuda.jit``): twins of ``elman_cpu.py``, same arguments in the
same order, same conventions (lengths, reverse, truncate, clip).

One launch runs the whole time loop (a persistent kernel): block b owns sequence b, its threads own
hidden units, and each step reads the previous step's vector from the array the previous step wrote
(one ``syncthreads`` per step). The input products and the weight-gradient sums are cuBLAS products
done by the caller. The Python functions launch on the stream of their arrays (CuPy's current one).
"""
from . import activations
from .cuda_blocks import MAX_THREADS, block_sum, launch
from .cuda_compat import cuda, device_jit, kernel_jit
from .scalar import compile_scalar_functions

_scalar = compile_scalar_functions(activations, device_jit)
activate = _scalar.activate
derivative_from_output = _scalar.derivative_from_output
position = _scalar.position
clip_scale = _scalar.clip_scale


def _forward_kernel(U, WsT, S0, lengths, reverse, act, S):
    T = U.shape[0]
    H = U.shape[2]
    one = U.dtype.type(1.0)
    b = cuda.blockIdx.x
    tid = cuda.threadIdx.x
    nt = cuda.blockDim.x
    L = lengths[b]
    for i in range(T):
        if i < L:
            t = position(i, L, reverse)
            prev = S0[b] if i == 0 else S[position(i - 1, L, reverse), b]
            for j in range(tid, H, nt):
                acc = U[t, b, j]
                for k in range(H):
                    acc += prev[k] * WsT[k, j]
                S[t, b, j] = activate(act, acc, one)
        else:
            for j in range(tid, H, nt):
                S[i, b, j] = S0[b, j] if reverse else S[L - 1, b, j]
        cuda.syncthreads()


def _backward_kernel(dS_out, Ws, S, lengths, reverse, act, truncate, clip, delta, dS0):
    T = S.shape[0]
    H = S.shape[2]
    one = S.dtype.type(1.0)
    scratch = cuda.shared.array(MAX_THREADS, S.dtype)
    b = cuda.blockIdx.x
    tid = cuda.threadIdx.x
    nt = cuda.blockDim.x
    L = lengths[b]
    for i in range(T - 1, -1, -1):
        if i < L:
            t = position(i, L, reverse)
            flows = i + 1 < L and not (truncate > 0 and (i + 1) % truncate == 0)
            later = delta[position(i + 1, L, reverse), b] if flows else delta[t, b]
            sumsq = one - one
            for k in range(tid, H, nt):
                g = dS_out[t, b, k]
                if flows:
                    for j in range(H):
                        g += later[j] * Ws[j, k]
                if clip > 0:
                    delta[t, b, k] = g  # kept until the norm over the block is known
                    sumsq += g * g
                else:
                    delta[t, b, k] = g * derivative_from_output(act, S[t, b, k], one)
            if clip > 0:
                scale = clip_scale(block_sum(sumsq, scratch), clip, one)
                for k in range(tid, H, nt):
                    delta[t, b, k] = delta[t, b, k] * scale * derivative_from_output(act, S[t, b, k], one)
        else:
            for k in range(tid, H, nt):
                delta[i, b, k] = 0
        cuda.syncthreads()
    first = delta[position(0, L, reverse), b]
    for k in range(tid, H, nt):
        acc = one - one
        for j in range(H):
            acc += first[j] * Ws[j, k]
        dS0[b, k] = acc


forward_kernel = kernel_jit(_forward_kernel)
backward_kernel = kernel_jit(_backward_kernel)


def forward_recurrence(U, WsT, S0, lengths, reverse, act, S):
    """S_t = g1(U_t + S_{t-1} Wsᵀ); arguments as ``elman_cpu.forward_recurrence``."""
    launch(forward_kernel, U.shape[1], U.shape[2], U, (U, WsT, S0, lengths, reverse, act, S))


def backward_recurrence(dS_out, Ws, S, lengths, reverse, act, truncate, clip, delta, dS0):
    """delta_t = (dS_out_t + delta_{t+1} Ws) ⊙ g1'(S_t); arguments as ``elman_cpu.backward_recurrence``."""
    launch(backward_kernel, S.shape[1], S.shape[2], S,
           (dS_out, Ws, S, lengths, reverse, act, truncate, clip, delta, dS0))


def signatures(numba_dtype):
    """Argument types of each kernel for one float dtype, for the compile check."""
    from numba import types

    a3, a2 = types.Array(numba_dtype, 3, "C"), types.Array(numba_dtype, 2, "C")
    lengths = types.Array(types.int32, 1, "C")
    i64, f64 = types.int64, types.float64
    return {
        "elman.forward": (_forward_kernel, (a3, a2, a2, lengths, i64, i64, a3)),
        "elman.backward": (_backward_kernel, (a3, a2, a3, lengths, i64, i64, i64, f64, a3, a2)),
    }
