"""How the ``*_cpu.py`` kernels split their work, chosen per call from the shape.

The sequences of a batch are independent, so both variants give each thread a share of them and
let it run the whole time loop over its share: one parallel region per call, no synchronisation per
step. They differ in how a share computes its recurrent products at each step:

``loops``: a few sequences at a time (a tile) with plain dot products the compiler vectorises;
best for small H or a small batch, where a BLAS call per step costs more than the product.
``blas``: one BLAS product per step for the whole share (``np.dot`` in Numba calls SciPy's BLAS,
limited to one thread while the kernel runs, so the threads do not fight BLAS's own); best for
large H and batch.

``GPUBPTT_CPU_VARIANT=loops|blas`` (read at each call) overrides the choice; ``auto`` or unset chooses.
The thread count is Numba's (``numba.set_num_threads``, ``NUMBA_NUM_THREADS``); with one share
(one thread, or a single sequence) the kernels run without a parallel region.
"""
import contextlib
import os

from numba import get_num_threads, njit

# Options of every CPU kernel and of the scalar math compiled for them. error_model="numpy": a float
# division by zero gives inf/nan as in NumPy instead of raising, which is what lets LLVM vectorise
# loops that divide (Python's ZeroDivisionError check is a branch per element). reassoc/contract:
# sums may be reordered and multiply-adds fused (vectorised dot products, FMAs). No assumption about
# NaN or Inf: non-finite values still propagate for the training loop's guard to see.
JIT_OPTIONS = dict(cache=True, error_model="numpy", fastmath={"reassoc", "contract"})

VARIANTS = ("auto", "loops", "blas")
LOOPS_MAX_HIDDEN = 32  # above this, and with more than LOOPS_MAX_BATCH sequences, BLAS is faster
LOOPS_MAX_BATCH = 4
TILE = 4  # sequences a thread advances together in the loops variant


def choose(batch, hidden):
    """'loops' or 'blas' for a recurrence over ``batch`` sequences of ``hidden`` units."""
    forced = os.environ.get("GPUBPTT_CPU_VARIANT", "auto")
    if forced not in VARIANTS:
        raise ValueError(f"GPUBPTT_CPU_VARIANT: expected one of {', '.join(VARIANTS)}, got {forced!r}")
    if forced != "auto":
        return forced
    return "loops" if hidden <= LOOPS_MAX_HIDDEN or batch <= LOOPS_MAX_BATCH else "blas"


def plan(batch, hidden):
    """(variant, tile, shares): the variant, the sequences per tile (loops) and the threads used."""
    variant = choose(batch, hidden)
    threads = get_num_threads()
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


_controller = None


def single_threaded_blas():
    """A context in which every loaded BLAS runs on the calling thread only (threadpoolctl); the
    kernel's own threads are the parallelism. A no-op context when threadpoolctl is missing."""
    global _controller
    if _controller is None:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:  # pragma: no cover - threadpoolctl is a dependency
            return contextlib.nullcontext()
        _controller = ThreadpoolController()
    return _controller.limit(limits=1, user_api="blas")


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
