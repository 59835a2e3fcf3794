"""How the ``*_cpu.py`` kernels split their work, chosen per call from the shape.

``loops``: the sequences of the batch are independent, so each thread takes a share of them and runs
its own time loop over them, the recurrent product written as plain loops the compiler vectorises;
one parallel region per call, no synchronisation per step. Best while Ws stays in the core's caches
(small H) or the batch is too small to give a large matrix product.
``blas``: one time loop; at each step one matrix product for the whole batch (NumPy's BLAS through
``np.dot``, its own threads), then the pointwise work split over the sequences. Best for large H
and batch, where the product dominates.

``GPUBPTT_CPU_VARIANT=loops|blas`` (read at each call) overrides the choice; ``auto`` or unset chooses.
"""
import os

# Options of every CPU kernel and of the scalar math compiled for them. error_model="numpy": a float
# division by zero gives inf/nan as in NumPy instead of raising, which is what lets LLVM vectorise
# loops that divide (Python's ZeroDivisionError check is a branch per element). reassoc/contract:
# sums may be reordered and multiply-adds fused (vectorised dot products, FMAs). No assumption about
# NaN or Inf: non-finite values still propagate for the training loop's guard to see.
JIT_OPTIONS = dict(cache=True, error_model="numpy", fastmath={"reassoc", "contract"})

VARIANTS = ("auto", "loops", "blas")
LOOPS_MAX_HIDDEN = 128  # Ws of 128x128 float32 is 64 KiB: L2-resident on any current core


def choose(batch, hidden):
    """'loops' or 'blas' for a recurrence over ``batch`` sequences of ``hidden`` units."""
    forced = os.environ.get("GPUBPTT_CPU_VARIANT", "auto")
    if forced not in VARIANTS:
        raise ValueError(f"GPUBPTT_CPU_VARIANT: expected one of {', '.join(VARIANTS)}, got {forced!r}")
    if forced != "auto":
        return forced
    return "loops" if hidden <= LOOPS_MAX_HIDDEN or batch == 1 else "blas"
