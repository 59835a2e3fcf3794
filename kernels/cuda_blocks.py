"""Block-level helpers shared by the ``*_cuda.py`` kernels: the launch shape and a block reduction."""
from .cuda_compat import cuda, launch_stream

MAX_THREADS = 256  # threads per block; a power of two (block_sum halves it)


def threads_for(units):
    """Threads per block for ``units`` hidden units: a power of two from 32 to MAX_THREADS."""
    n = 32
    while n < units and n < MAX_THREADS:
        n *= 2
    return n


def launch(kernel, batch, units, like, args):
    """Launch ``kernel`` with one block per sequence of the batch, on the stream of ``like``."""
    kernel[batch, threads_for(units), launch_stream(like)](*args)


@cuda.jit(device=True, inline="always")
def block_sum(value, scratch):
    """Sum of ``value`` over the threads of the block (every thread gets it). ``scratch`` is a shared
    array of MAX_THREADS entries; every thread of the block must call this (it synchronises)."""
    tid = cuda.threadIdx.x
    scratch[tid] = value
    cuda.syncthreads()
    half = cuda.blockDim.x // 2
    while half > 0:
        if tid < half:
            scratch[tid] += scratch[tid + half]
        cuda.syncthreads()
        half //= 2
    total = scratch[0]
    cuda.syncthreads()
    return total
