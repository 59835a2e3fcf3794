"""How the ``*_cpu.py`` kernels split their work, chosen per call from the shape.

The sequences of a batch are independent, so each thread takes a share of them and runs the whole
time loop over it: one parallel region per call, no synchronisation per step. The variants differ in
how a share's recurrent products are formed:
``loops``: tiles of a few sequences, the products written as plain dot products the compiler
vectorises; for thin shares (few sequences a thread), where a BLAS call costs more than it computes.
``blas``: a contiguous slice of the batch, one BLAS product per step for all of it (SciPy's BLAS
through Numba's ``np.dot``), then the pointwise work.

BLAS runs on the calling thread (``_numba_blas_on_one_thread``): concurrent calls from the kernels'
threads scale (measured on 2 cores: two threads each multiplying half of [6400,256]x[256,256], 3.4
ms against 6.6 ms for one thread alone), while a BLAS pool of its own would spin between calls and
starve the kernels' threads.

``GPUBPTT_CPU_VARIANT=loops|blas`` (read at each call) overrides the choice; ``auto`` or unset chooses.
The thread count is Numba's (``numba.set_num_threads``, ``NUMBA_NUM_THREADS``); with one share
(one thread, or a single sequence) the kernels run without a parallel region.
"""
import os

from numba import get_num_threads, njit

# Options of every CPU kernel and of the scalar math compiled for them. error_model="numpy": a float
# division by zero gives inf/nan as in NumPy instead of raising, which is what lets LLVM vectorise
# loops that divide (Python's ZeroDivisionError check is a branch per element). reassoc/contract:
# sums may be reordered and multiply-adds fused (vectorised dot products, FMAs). No assumption about
# NaN or Inf: non-finite values still propagate for the training loop's guard to see.
JIT_OPTIONS = dict(cache=True, error_model="numpy", fastmath={"reassoc", "contract"})

VARIANTS = ("auto", "loops", "blas")
# ``blas`` once each thread's slice of the batch has BLAS_MIN_SHARE sequences: BLAS's products are then
# real matrix products and beat the vectorised loops (measured on 2 cores, forward + backward
# recurrence, (B,T,H) = (256,100,64) 4.1 ms against 8.6, (128,50,512) 37 against 47, (64,100,256) 12.8
# against 13.3); below it, thin products cost BLAS more than they save ((32,100,256) on 2 threads
# 8.2 against 6.7, (4,1000,256) 53 against 9).
BLAS_MIN_SHARE = 24
TILE = 4  # sequences a thread advances together in the loops variant


def choose(batch, hidden, threads=None):
    """'loops' or 'blas' for a recurrence over ``batch`` sequences of ``hidden`` units on ``threads``
    threads (Numba's count by default)."""
    forced = os.environ.get("GPUBPTT_CPU_VARIANT", "auto")
    if forced not in VARIANTS:
        raise ValueError(f"GPUBPTT_CPU_VARIANT: expected one of {', '.join(VARIANTS)}, got {forced!r}")
    if forced != "auto":
        return forced
    threads = get_num_threads() if threads is None else threads
    return "blas" if -(-batch // threads) >= BLAS_MIN_SHARE else "loops"


def plan(batch, hidden):
    """(variant, tile, shares): the variant, the sequences per tile (loops) and the threads used."""
    threads = get_num_threads()
    variant = choose(batch, hidden, threads)
    if variant == "loops":
        tile = max(1, min(TILE, -(-batch // threads)))
        return variant, tile, min(-(-batch // tile), threads)
    return variant, batch, min(batch, threads)


def compile_both(fn):
    """(parallel, serial) compilations of one kernel: ``prange`` runs in parallel in the first and as
    a plain loop in the second, which spares a single share the parallel region's start-up."""
    return njit(parallel=True, **JIT_OPTIONS)(fn), njit(**JIT_OPTIONS)(fn)


def pick(kernels, shares):
    return kernels[0] if shares > 1 else kernels[1]


def _numba_blas_on_one_thread():
    """Run the BLAS that Numba's ``np.dot`` calls (SciPy's) on the calling thread, once for the process.

    The kernels' own threads are the parallelism, and a BLAS pool of its own would spin between
    calls and take the cores from them: measured on a 2-core machine, a serial kernel ran 40 times
    slower (8 ms instead of 0.2 ms) for ~50 ms after a two-thread OpenBLAS product. NumPy's BLAS is
    left alone when it is a library of its own (pip wheels: numpy.libs/); the engine calls only
    SciPy's (kernels/linalg_cpu.py). Needs threadpoolctl (a dependency); without it nothing is set.
    """
    try:
        import scipy.linalg.cython_blas  # noqa: F401 - loads the library Numba binds np.dot to
        from threadpoolctl import ThreadpoolController
    except ImportError:  # pragma: no cover
        return
    controller = ThreadpoolController()
    ours = [lib.filepath for lib in controller.lib_controllers
            if lib.user_api == "blas" and "numpy" not in os.path.basename(os.path.dirname(lib.filepath))]
    if ours:
        controller.select(filepath=ours).limit(limits=1)


_numba_blas_on_one_thread()


# glibc's malloc thresholds while the CPU kernels are loaded: arrays up to MMAP_THRESHOLD come from the
# heap, and up to TRIM_THRESHOLD of freed heap stays with the process. By default glibc maps a large
# array afresh (or trims the freed heap) and every page is faulted in again on first write: measured
# on a 2-core VM, ~1500 page faults in one forward + BPTT at (B,T,D,H) = (256,100,16,64) took 7 of
# its 17 ms; keeping freed memory, 10 ms. Every allocation of the process is affected (PyTorch's in
# the same process too); ``GPUBPTT_KEEP_FREED_MEMORY=0`` leaves glibc's defaults.
MMAP_THRESHOLD = 256 << 20
TRIM_THRESHOLD = 512 << 20


def _keep_freed_memory():
    """Set glibc's M_MMAP_THRESHOLD and M_TRIM_THRESHOLD (mallopt(3)); True when both were set."""
    if os.environ.get("GPUBPTT_KEEP_FREED_MEMORY", "1") == "0":
        return False
    import ctypes
    import ctypes.util
    import platform

    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:  # pragma: no cover
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # malloc.h
    return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(libc.mallopt(M_TRIM_THRESHOLD,
                                                                                       TRIM_THRESHOLD))


KEEPS_FREED_MEMORY = _keep_freed_memory()


@njit(**JIT_OPTIONS)
def tile_products(W, X, n, out):
    """out[q, j] = Σ_k W[j, k] X[q, k] for the first n rows of X: the recurrent products of a tile of
    sequences. Row j of W is read once for the whole tile (from L1 after the first sequence), and
    each dot product runs over contiguous memory, which the compiler vectorises."""
    for j in range(W.shape[0]):
        for q in range(n):
            acc = out.dtype.type(0.0)
            for k in range(W.shape[1]):
                acc += W[j, k] * X[q, k]
            out[q, j] = acc
