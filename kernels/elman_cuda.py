"""Elman RNN recurrences on the GPU (``@cuda.jit``): twins of ``elman_cpu.py``.

One launch runs the whole time loop (a persistent kernel): block b owns batch element b, its threads
own hidden units, and the state of the previous step lives in shared memory (double-buffered, one
``syncthreads`` per step). The input products and the weight-gradient sums are cuBLAS products done
by the caller. ``forward_recurrence``/``backward_recurrence`` take the same arguments in the same
order as the CPU functions and launch on the stream of their arrays (CuPy's current stream).
"""
from . import activations
from .cuda_compat import cuda, device_jit, kernel_jit, launch_stream
from .scalar import compile_scalar_functions

_scalar = compile_scalar_functions(activations, device_jit)
activate = _scalar.activate
derivative_from_output = _scalar.derivative_from_output

MAX_THREADS = 256


def _forward_kernel(U, WsT, S0, act, S):
    T = U.shape[0]
    H = U.shape[2]
    one = U.dtype.type(1.0)
    state = cuda.shared.array(0, U.dtype)  # [2,H]: S_{t-1} and S_t, alternating
    b = cuda.blockIdx.x
    tid = cuda.threadIdx.x
    nt = cuda.blockDim.x
    for j in range(tid, H, nt):
        state[j] = S0[b, j]
    cuda.syncthreads()
    src = 0
    for t in range(T):
        dst = H - src
        for j in range(tid, H, nt):
            acc = U[t, b, j]
            for k in range(H):
                acc += state[src + k] * WsT[k, j]
            s = activate(act, acc, one)
            state[dst + j] = s
            S[t, b, j] = s
        cuda.syncthreads()
        src = dst


def _backward_kernel(dS_out, Ws, S, act, delta):
    T = S.shape[0]
    H = S.shape[2]
    one = S.dtype.type(1.0)
    grad = cuda.shared.array(0, S.dtype)  # [2,H]: delta_{t+1} and delta_t, alternating
    b = cuda.blockIdx.x
    tid = cuda.threadIdx.x
    nt = cuda.blockDim.x
    for k in range(tid, H, nt):
        grad[k] = one - one
    cuda.syncthreads()
    src = 0
    for t in range(T - 1, -1, -1):
        dst = H - src
        for k in range(tid, H, nt):
            acc = dS_out[t, b, k]
            for j in range(H):
                acc += grad[src + j] * Ws[j, k]
            g = acc * derivative_from_output(act, S[t, b, k], one)
            grad[dst + k] = g
            delta[t, b, k] = g
        cuda.syncthreads()
        src = dst


forward_kernel = kernel_jit(_forward_kernel)
backward_kernel = kernel_jit(_backward_kernel)


def _launch(kernel, H, first, args):
    threads = min(MAX_THREADS, 32 * ((H + 31) // 32))
    smem = 2 * H * first.dtype.itemsize
    kernel[first.shape[1], threads, launch_stream(first), smem](*args)


def forward_recurrence(U, WsT, S0, act, S):
    """S_t = g1(U_t + S_{t-1} Wsᵀ); arguments as ``elman_cpu.forward_recurrence``."""
    _launch(forward_kernel, U.shape[2], U, (U, WsT, S0, act, S))


def backward_recurrence(dS_out, Ws, S, act, delta):
    """delta_t = (dS_out_t + delta_{t+1} Ws) ⊙ g1'(S_t); arguments as ``elman_cpu.backward_recurrence``."""
    _launch(backward_kernel, S.shape[2], S, (dS_out, Ws, S, act, delta))


def signatures(numba_dtype):
    """Argument types of each kernel for one float dtype, for the compile check."""
    from numba import types

    a3 = types.Array(numba_dtype, 3, "C")
    a2 = types.Array(numba_dtype, 2, "C")
    return {
        "elman.forward": (_forward_kernel, (a3, a2, a2, types.int64, a3)),
        "elman.backward": (_backward_kernel, (a3, a2, a3, types.int64, a3)),
    }
