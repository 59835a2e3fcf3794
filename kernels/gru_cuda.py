"""GRU recurrences on the GPU (``@cuda.jit``): twins of ``gru_cpu.py``, same arguments in the same
order. Block b owns sequence b; each thread owns hidden units j and computes their three gates.
"""
from . import activations
from .cuda_blocks import MAX_THREADS, block_sum, launch
from .cuda_compat import cuda, device_jit, kernel_jit
from .scalar import compile_scalar_functions

_scalar = compile_scalar_functions(activations, device_jit)
gru_pointwise = _scalar.gru_pointwise
gru_pointwise_backward = _scalar.gru_pointwise_backward
position = _scalar.position
clip_scale = _scalar.clip_scale


def _forward_kernel(U, WsT, bs, H0, lengths, reverse, Hs, Gn):
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
            h_prev = H0[b] if i == 0 else Hs[position(i - 1, L, reverse), b]
            for j in range(tid, H, nt):
                ar = U[t, b, j] + bs[j]
                az = U[t, b, H + j] + bs[H + j]
                hn = bs[2 * H + j]
                for k in range(H):
                    hk = h_prev[k]
                    ar += hk * WsT[k, j]
                    az += hk * WsT[k, H + j]
                    hn += hk * WsT[k, 2 * H + j]
                r, z, n, h = gru_pointwise(ar, az, U[t, b, 2 * H + j], hn, h_prev[j], one)
                U[t, b, j] = r
                U[t, b, H + j] = z
                U[t, b, 2 * H + j] = n
                Gn[t, b, j] = hn
                Hs[t, b, j] = h
        else:
            for j in range(tid, H, nt):
                Hs[i, b, j] = H0[b, j] if reverse else Hs[L - 1, b, j]
        cuda.syncthreads()


def _backward_kernel(dH_out, Ws, G, Gn, Hs, H0, lengths, reverse, truncate, clip, dRec, dNx, dH0):
    T = G.shape[0]
    H = Hs.shape[2]
    one = G.dtype.type(1.0)
    scratch = cuda.shared.array(MAX_THREADS, G.dtype)
    b = cuda.blockIdx.x
    tid = cuda.threadIdx.x
    nt = cuda.blockDim.x
    L = lengths[b]
    for j in range(tid, H, nt):
        dH0[b, j] = 0  # carries dh_{t+1} z_{t+1} (the path around the gates); dL/dh0 at the end
    for i in range(T - 1, -1, -1):
        if i < L:
            t = position(i, L, reverse)
            flows = i + 1 < L and not (truncate > 0 and (i + 1) % truncate == 0)
            later = dRec[position(i + 1, L, reverse), b] if flows else dRec[t, b]
            h_prev = H0[b] if i == 0 else Hs[position(i - 1, L, reverse), b]
            sumsq = one - one
            for j in range(tid, H, nt):
                dh = dH_out[t, b, j]
                if flows:
                    dh += dH0[b, j]
                    for m in range(3 * H):
                        dh += later[m] * Ws[m, j]
                dH_out[t, b, j] = dh
                sumsq += dh * dh
            scale = clip_scale(block_sum(sumsq, scratch), clip, one) if clip > 0 else one
            for j in range(tid, H, nt):
                dh = dH_out[t, b, j] * scale
                z = G[t, b, H + j]
                dr, dz, dn, dhn = gru_pointwise_backward(dh, G[t, b, j], z, G[t, b, 2 * H + j], Gn[t, b, j],
                                                         h_prev[j], one)
                dRec[t, b, j] = dr
                dRec[t, b, H + j] = dz
                dRec[t, b, 2 * H + j] = dhn
                dNx[t, b, j] = dn
                dH0[b, j] = dh * z
        else:
            for m in range(tid, 3 * H, nt):
                dRec[i, b, m] = 0
            for j in range(tid, H, nt):
                dNx[i, b, j] = 0
        cuda.syncthreads()
    first = dRec[position(0, L, reverse), b]
    for k in range(tid, H, nt):
        acc = dH0[b, k]
        for m in range(3 * H):
            acc += first[m] * Ws[m, k]
        dH0[b, k] = acc


forward_kernel = kernel_jit(_forward_kernel)
backward_kernel = kernel_jit(_backward_kernel)


def forward_recurrence(U, WsT, bs, H0, lengths, reverse, Hs, Gn):
    """Arguments as ``gru_cpu.forward_recurrence``."""
    launch(forward_kernel, U.shape[1], Hs.shape[2], U, (U, WsT, bs, H0, lengths, reverse, Hs, Gn))


def backward_recurrence(dH_out, Ws, G, Gn, Hs, H0, lengths, reverse, truncate, clip, dRec, dNx, dH0):
    """Arguments as ``gru_cpu.backward_recurrence``."""
    launch(backward_kernel, G.shape[1], Hs.shape[2], G,
           (dH_out, Ws, G, Gn, Hs, H0, lengths, reverse, truncate, clip, dRec, dNx, dH0))


def signatures(numba_dtype):
    """Argument types of each kernel for one float dtype, for the compile check."""
    from numba import types

    a3, a2, a1 = (types.Array(numba_dtype, n, "C") for n in (3, 2, 1))
    lengths = types.Array(types.int32, 1, "C")
    i64, f64 = types.int64, types.float64
    return {
        "gru.forward": (_forward_kernel, (a3, a2, a1, a2, lengths, i64, a3, a3)),
        "gru.backward": (_backward_kernel, (a3, a2, a3, a3, a3, a2, lengths, i64, i64, f64, a3, a3, a2)),
    }
