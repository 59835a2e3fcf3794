"""LSTM recurrences on the GPU (``@cuda.jit``): twins of ``lstm_cpu.py``, same arguments in the same
order. Block b owns sequence b; each thread owns hidden units j and computes their four gates, so
the gates and the cell state of unit j never leave the thread that made them.
"""
from . import activations
from .cuda_blocks import MAX_THREADS, block_sum, launch
from .cuda_compat import cuda, device_jit, kernel_jit
from .scalar import compile_scalar_functions

_scalar = compile_scalar_functions(activations, device_jit)
lstm_pointwise = _scalar.lstm_pointwise
lstm_pointwise_backward = _scalar.lstm_pointwise_backward
position = _scalar.position
clip_scale = _scalar.clip_scale


def _forward_kernel(U, WsT, H0, C0, lengths, reverse, Hs, Cs):
    T = U.shape[0]
    H = Hs.shape[2]
    one = U.dtype.type(1.0)
    b = cuda.blockIdx.x
    tid = cuda.threadIdx.x
    nt = cuda.blockDim.x
    L = lengths[b]
    for i in range(T):
        if i < L:
            t = position(i, L, reverse)
            tp = position(i - 1, L, reverse)
            h_prev = H0[b] if i == 0 else Hs[tp, b]
            c_prev = C0[b] if i == 0 else Cs[tp, b]
            for j in range(tid, H, nt):
                ai = U[t, b, j]
                af = U[t, b, H + j]
                ag = U[t, b, 2 * H + j]
                ao = U[t, b, 3 * H + j]
                for k in range(H):
                    hk = h_prev[k]
                    ai += hk * WsT[k, j]
                    af += hk * WsT[k, H + j]
                    ag += hk * WsT[k, 2 * H + j]
                    ao += hk * WsT[k, 3 * H + j]
                gi, gf, gg, go, c, h = lstm_pointwise(ai, af, ag, ao, c_prev[j], one)
                U[t, b, j] = gi
                U[t, b, H + j] = gf
                U[t, b, 2 * H + j] = gg
                U[t, b, 3 * H + j] = go
                Cs[t, b, j] = c
                Hs[t, b, j] = h
        else:
            for j in range(tid, H, nt):
                Hs[i, b, j] = H0[b, j] if reverse else Hs[L - 1, b, j]
                Cs[i, b, j] = C0[b, j] if reverse else Cs[L - 1, b, j]
        cuda.syncthreads()


def _backward_kernel(dH_out, Ws, G, Hs, Cs, C0, lengths, reverse, truncate, clip, dG, dH0, dC0):
    T = G.shape[0]
    H = Hs.shape[2]
    one = G.dtype.type(1.0)
    scratch = cuda.shared.array(MAX_THREADS, G.dtype)
    b = cuda.blockIdx.x
    tid = cuda.threadIdx.x
    nt = cuda.blockDim.x
    L = lengths[b]
    for j in range(tid, H, nt):
        dC0[b, j] = 0  # carries dL/dc_t through c_{t+1} from step to step; dL/dc0 at the end
    for i in range(T - 1, -1, -1):
        if i < L:
            t = position(i, L, reverse)
            tp = position(i - 1, L, reverse)
            flows = i + 1 < L and not (truncate > 0 and (i + 1) % truncate == 0)
            later = dG[position(i + 1, L, reverse), b] if flows else dG[t, b]
            c_prev = C0[b] if i == 0 else Cs[tp, b]
            sumsq = one - one
            for j in range(tid, H, nt):
                dh = dH_out[t, b, j]
                if flows:
                    for m in range(4 * H):
                        dh += later[m] * Ws[m, j]
                else:
                    dC0[b, j] = 0
                dH_out[t, b, j] = dh
                sumsq += dh * dh + dC0[b, j] * dC0[b, j]
            scale = clip_scale(block_sum(sumsq, scratch), clip, one) if clip > 0 else one
            for j in range(tid, H, nt):
                gf = G[t, b, H + j]
                di, df, dg, do, dc = lstm_pointwise_backward(
                    dH_out[t, b, j] * scale, dC0[b, j] * scale, G[t, b, j], gf, G[t, b, 2 * H + j],
                    G[t, b, 3 * H + j], Cs[t, b, j], c_prev[j], one)
                dG[t, b, j] = di
                dG[t, b, H + j] = df
                dG[t, b, 2 * H + j] = dg
                dG[t, b, 3 * H + j] = do
                dC0[b, j] = dc * gf
        else:
            for m in range(tid, 4 * H, nt):
                dG[i, b, m] = 0
        cuda.syncthreads()
    first = dG[position(0, L, reverse), b]
    for k in range(tid, H, nt):
        acc = one - one
        for m in range(4 * H):
            acc += first[m] * Ws[m, k]
        dH0[b, k] = acc


forward_kernel = kernel_jit(_forward_kernel)
backward_kernel = kernel_jit(_backward_kernel)


def forward_recurrence(U, WsT, H0, C0, lengths, reverse, Hs, Cs):
    """Arguments as ``lstm_cpu.forward_recurrence``."""
    launch(forward_kernel, U.shape[1], Hs.shape[2], U, (U, WsT, H0, C0, lengths, reverse, Hs, Cs))


def backward_recurrence(dH_out, Ws, G, Hs, Cs, C0, lengths, reverse, truncate, clip, dG, dH0, dC0):
    """Arguments as ``lstm_cpu.backward_recurrence``."""
    launch(backward_kernel, G.shape[1], Hs.shape[2], G,
           (dH_out, Ws, G, Hs, Cs, C0, lengths, reverse, truncate, clip, dG, dH0, dC0))


def signatures(numba_dtype):
    """Argument types of each kernel for one float dtype, for the compile check."""
    from numba import types

    a3, a2 = types.Array(numba_dtype, 3, "C"), types.Array(numba_dtype, 2, "C")
    lengths = types.Array(types.int32, 1, "C")
    i64, f64 = types.int64, types.float64
    return {
        "lstm.forward": (_forward_kernel, (a3, a2, a2, a2, lengths, i64, a3, a3)),
        "lstm.backward": (_backward_kernel, (a3, a2, a3, a3, a3, a2, lengths, i64, i64, f64, a3, a2, a2)),
    }
