"""Launch shapes, block-level helpers and the choice of kernel variant shared by the ``*_cuda.py``
recurrence kernels.

Every cell module (``elman_cuda``, ``lstm_cuda``, ``gru_cuda``) has three variants of each
recurrence kernel, all running the whole time loop in one launch (DESIGN.md §4):

``simple``
    One block per sequence, threads own hidden units, Ws read from global memory at every step
    (through L1/L2). Runs anywhere, any size; the fallback.
``tiled``
    One block per tile of ``tile`` sequences (``TILES``), Ws (or Wsᵀ) copied once into dynamic shared
    memory and kept there for all steps, the tile's state in shared memory (two buffers, so one
    ``syncthreads`` per step; the per-step clipping adds a block reduction). A thread owns a hidden
    unit and accumulates it for every sequence of the tile in registers, so each Ws element read from
    shared memory serves the whole tile. Needs Ws to fit in one block's shared memory.
``cooperative``
    For batches too small to fill the GPU: the hidden units are split across the blocks of a
    cooperative grid (at most one block per SM, never more than ``max_cooperative_grid_blocks``);
    each block keeps its slice of Ws in shared memory for the whole run and computes its units for
    every sequence of the batch, the dot products split ``splits`` ways over the block's threads;
    one grid synchronisation per step (two with per-step clipping, whose norm spans the blocks).

``choose`` picks one from the shape and the device's limits (the rule is in its docstring);
``GPUBPTT_CUDA_VARIANT=simple|tiled|cooperative|auto`` overrides it (default ``auto``). A variant
forced by the variable that cannot run the shape (Ws, or its slice per SM, too large for shared memory) raises
``ValueError``. Under the simulator the device is described as one SM with 48 KiB of shared memory,
so the cooperative variant always runs as a single block there: the simulator cannot synchronise
more than one (DESIGN.md §5), and ``auto`` never picks it.
"""
from dataclasses import dataclass, replace

import numpy as np

from .cuda_compat import (
    allow_dynamic_shared_memory,
    compiled_kernel,
    cooperative_grid_limit,
    cuda,
    device_limits,
    launch_stream,
    simulator_enabled,
    static_shared_memory,
)
from .settings import env_choice

MAX_THREADS = 256  # threads per block; a power of two (block_sum halves it)

VARIANT_ENV = "GPUBPTT_CUDA_VARIANT"
VARIANTS = ("simple", "tiled", "cooperative")
TILES = (1, 4)  # sequences per block of the tiled kernels: one kernel per tile size (register accumulators)
COOP_MIN_HIDDEN = 256  # auto splits a small batch's units across the GPU from this hidden size on
COOP_THREADS = 256  # most threads per block of the cooperative kernels
MAX_SPLITS = 32  # most partial sums per output in the cooperative kernels
SMEM_RESERVE = 1024  # bytes of a block's shared memory left for static use (sm_90 grid sync takes 1 KiB)


def threads_for(units):
    """Threads per block for ``units`` hidden units: a power of two from 32 to MAX_THREADS."""
    n = 32
    while n < units and n < MAX_THREADS:
        n *= 2
    return n


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


@cuda.jit(device=True, inline="always")
def block_sums(buf, start, rows):
    """Sums over the block of ``rows`` rows of blockDim.x values each, in place: thread ``tid`` has
    written row r's value at ``buf[start + r * blockDim.x + tid]``; afterwards row r's total is at
    ``buf[start + r * blockDim.x]``. blockDim.x is a power of two; every thread of the block must
    call this (it synchronises before and after)."""
    tid = cuda.threadIdx.x
    nt = cuda.blockDim.x
    cuda.syncthreads()
    half = nt // 2
    while half > 0:
        if tid < half:
            for r in range(rows):
                buf[start + r * nt + tid] += buf[start + r * nt + tid + half]
        cuda.syncthreads()
        half //= 2


@cuda.jit(device=True, inline="always")
def split_sum(sm, part, b, unit, units, splits):
    """The sum of the ``splits`` partial dot products a cooperative block left in shared memory for
    sequence b and its unit ``unit``: Σ_ks sm[part + (b·splits + ks)·units + unit]."""
    acc = sm[part + b * splits * units + unit]
    for ks in range(1, splits):
        acc += sm[part + (b * splits + ks) * units + unit]
    return acc


# ----------------------------------------------------------------------------------------------
# Device limits and the variant choice


@dataclass(frozen=True)
class Limits:
    """What the choice of variant needs to know about a device."""

    sm_count: int
    smem_per_block: int  # dynamic shared memory per block without opting in (48 KiB)
    smem_optin: int  # the most a kernel may opt in to
    smem_per_sm: int  # shared memory of an SM, shared by its resident blocks
    cooperative: bool = True  # cooperative launches supported
    simulator: bool = False

    def resident_blocks(self, threads, smem):
        """Blocks of ``threads`` threads and ``smem`` B of dynamic shared memory an SM holds at once,
        as far as threads and shared memory decide (registers may allow fewer): 2048 threads and 32
        blocks per SM, SMEM_RESERVE bytes per block reserved by the system."""
        return max(0, min(2048 // threads, 32, self.smem_per_sm // (smem + SMEM_RESERVE)))


SIMULATOR_LIMITS = Limits(sm_count=1, smem_per_block=48 * 1024, smem_optin=48 * 1024, smem_per_sm=48 * 1024,
                          simulator=True)
# Published figures (CUDA C Programming Guide, "Compute capabilities"), used by the compile check's tables.
A100 = Limits(sm_count=108, smem_per_block=48 * 1024, smem_optin=163 * 1024, smem_per_sm=164 * 1024)
H100 = Limits(sm_count=132, smem_per_block=48 * 1024, smem_optin=227 * 1024, smem_per_sm=228 * 1024)


def current_limits():
    """Limits of the device kernels run on now: the GPU's, or SIMULATOR_LIMITS under the simulator."""
    if simulator_enabled():
        return SIMULATOR_LIMITS
    found = device_limits()
    if found is None:
        raise RuntimeError("no CUDA GPU is available and the CUDA simulator is off")
    return Limits(**found)


def requested_variant():
    """The variant asked for through GPUBPTT_CUDA_VARIANT ('auto' when unset)."""
    return env_choice(VARIANT_ENV, ("auto",) + VARIANTS, "auto")


@dataclass(frozen=True)
class Plan:
    """One launch: which variant, its grid, block and dynamic shared memory (bytes), and its shape:
    ``tile`` sequences per block (tiled), ``units`` hidden units per block and ``splits`` partial sums
    per output (cooperative)."""

    variant: str
    blocks: int
    threads: int
    smem: int = 0
    tile: int = 1
    units: int = 0
    splits: int = 1


@dataclass(frozen=True)
class Footprint:
    """Dynamic shared memory of a kernel's variants, in elements of the array dtype:
    ``tiled(tile, hidden, threads)`` and ``cooperative(batch, hidden, units, splits)``, with the same
    formulas as text for the compile check's report."""

    tiled: object
    cooperative: object
    tiled_text: str = ""
    cooperative_text: str = ""


def simple_plan(batch, hidden):
    return Plan("simple", batch, threads_for(hidden))


def tiled_plan(batch, hidden, itemsize, footprint, limits):
    """The tiled launch, or None when Ws does not fit in a block's shared memory. The tile is the
    largest of TILES that still leaves a block for every SM (tile · SMs <= batch), else the smallest;
    if that grid needs more than one wave of resident blocks (each block runs every step, so a
    second wave doubles the time), the smallest tile whose grid is resident at once, else the largest."""
    threads = threads_for(hidden)
    smem = {t: footprint.tiled(t, hidden, threads) * itemsize for t in TILES}
    fits = sorted(t for t in TILES if smem[t] <= limits.smem_optin - SMEM_RESERVE)
    if not fits:
        return None

    def one_wave(t):
        return -(-batch // t) <= limits.sm_count * limits.resident_blocks(threads, smem[t])

    tile = max([t for t in fits if t * limits.sm_count <= batch], default=fits[0])
    if not one_wave(tile):
        tile = next((t for t in fits if t > tile and one_wave(t)), fits[-1])
    return Plan("tiled", -(-batch // tile), threads, smem[tile], tile=tile)


def cooperative_plan(batch, hidden, gates, itemsize, footprint, limits, max_blocks=None):
    """The cooperative launch, or None when it cannot run.

    Blocks: at most one per SM (and at most ``max_blocks``), each owning ``units`` consecutive hidden
    units. Each output (sequence, unit) is a dot product of length gates·hidden split into ``splits``
    interleaved partial sums, one per thread, added in order by one thread: splits is the largest power
    of two <= sqrt(gates·hidden) (and <= MAX_SPLITS) that keeps batch·units·splits within a block of
    COOP_THREADS, which balances the partial sums' length against the final addition; units is then as
    large as the block allows (fewer blocks make the grid synchronisation cheaper at the same work per
    thread). Splits, then units, shrink until the slice of Ws and the partial sums fit in shared memory.
    """
    if not limits.cooperative:
        return None
    cap = limits.sm_count if max_blocks is None else max(1, min(limits.sm_count, max_blocks))
    units_min = -(-hidden // cap)
    splits = 1
    while (2 * splits <= MAX_SPLITS and (2 * splits) ** 2 <= gates * hidden
           and batch * units_min * 2 * splits <= COOP_THREADS):
        splits *= 2
    units = min(hidden, max(units_min, COOP_THREADS // (batch * splits)))
    while footprint.cooperative(batch, hidden, units, splits) * itemsize > limits.smem_optin - SMEM_RESERVE:
        if splits > 1:
            splits //= 2
        elif units > units_min:
            units = max(units_min, units // 2)
        else:
            return None
    threads = 32
    while threads < batch * units * splits and threads < COOP_THREADS:
        threads *= 2
    smem = footprint.cooperative(batch, hidden, units, splits) * itemsize
    return Plan("cooperative", -(-hidden // units), threads, smem, units=units, splits=splits)


def choose(batch, hidden, gates, itemsize, footprint, limits=None, variant=None):
    """The variant (a Plan) for one recurrence of ``batch`` sequences of ``hidden`` units with
    ``gates`` gates (1 Elman, 4 LSTM, 3 GRU) and elements of ``itemsize`` bytes.

    ``variant`` (default: GPUBPTT_CUDA_VARIANT, else 'auto') forces one; 'auto' picks:

    1. ``cooperative`` on a real GPU (never under the simulator), when its grid has at least two
       blocks and either Ws does not fit in one block's shared memory, or hidden >= COOP_MIN_HIDDEN
       and the tiled grid would leave at least half of the SMs idle (2 · blocks <= SMs): the batch
       is too small to fill the GPU, so the hidden units are spread over the SMs instead, each SM
       keeping its slice of Ws on chip. Below COOP_MIN_HIDDEN a step's dot products (hidden long, one
       per thread) are estimated to take less than a grid synchronisation (~1 µs);
    2. else ``tiled`` when its shared memory (Ws and the tile's buffers, the module's footprint) fits
       the opt-in limit less SMEM_RESERVE: 162 KiB on an A100, 226 KiB on an H100, 47 KiB under the
       simulator;
    3. else ``simple``.
    """
    limits = limits or current_limits()
    variant = variant or requested_variant()
    if variant == "simple":
        return simple_plan(batch, hidden)
    if variant == "tiled":
        plan = tiled_plan(batch, hidden, itemsize, footprint, limits)
        if plan is None:
            raise ValueError(
                f"{VARIANT_ENV}=tiled: Ws of {gates}·{hidden}x{hidden} elements of {itemsize} B does not fit in "
                f"{limits.smem_optin} B of shared memory per block; use auto, simple or cooperative")
        return plan
    if variant == "cooperative":
        plan = cooperative_plan(batch, hidden, gates, itemsize, footprint, limits)
        if plan is None:
            raise ValueError(
                f"{VARIANT_ENV}=cooperative cannot run batch {batch}, hidden {hidden} with {limits.smem_optin} B "
                f"of shared memory per block and {limits.sm_count} SMs; use auto, simple or tiled")
        return plan
    tiled = tiled_plan(batch, hidden, itemsize, footprint, limits)
    small_batch = hidden >= COOP_MIN_HIDDEN and tiled is not None and 2 * tiled.blocks <= limits.sm_count
    if not limits.simulator and (tiled is None or small_batch):
        plan = cooperative_plan(batch, hidden, gates, itemsize, footprint, limits)
        if plan is not None and plan.blocks > 1:
            return plan
    return tiled or simple_plan(batch, hidden)


def _problem(kernel, plan, args, limits):
    """Why ``plan`` cannot launch ``kernel`` on this GPU (None when it can): dynamic shared memory
    above the default needs an opt-in the driver may refuse; a cooperative grid must not exceed
    max_cooperative_grid_blocks. Returns (reason, cooperative limit or None)."""
    if limits.simulator:
        return None, None
    compiled = compiled_kernel(kernel, args)
    static = static_shared_memory(compiled)
    if static + plan.smem > limits.smem_optin:
        return f"{static} B of static and {plan.smem} B of dynamic shared memory exceed {limits.smem_optin} B", None
    if static + plan.smem > limits.smem_per_block and not allow_dynamic_shared_memory(compiled, plan.smem):
        return f"the driver refused {plan.smem} B of dynamic shared memory", None
    if plan.variant == "cooperative":
        most = cooperative_grid_limit(compiled, plan.threads, plan.smem)
        if most < plan.blocks:
            return f"a cooperative grid of {plan.blocks} blocks exceeds this kernel's limit of {most}", most
    return None, None


def run(batch, hidden, gates, itemsize, footprint, build, like):
    """Choose a plan, get ``(kernel, args) = build(plan)`` and launch it on the stream of ``like``.

    On a GPU the plan is checked against the compiled kernel first (see ``_problem``). A cooperative
    grid larger than the kernel's limit shrinks to it; any other plan that cannot launch gives way,
    when the variant was chosen automatically, to the choice without the shared-memory opt-in and at
    last to the simple variant. A forced variant that cannot launch raises RuntimeError. Returns the
    plan launched."""
    limits = current_limits()
    requested = requested_variant()
    plan = choose(batch, hidden, gates, itemsize, footprint, limits, requested)
    for _ in range(4):
        kernel, args = build(plan)
        reason, most = _problem(kernel, plan, args, limits)
        if reason is None:
            break
        if most:  # the cooperative grid is too large for this kernel: a smaller one
            smaller = cooperative_plan(batch, hidden, gates, itemsize, footprint, limits, max_blocks=most)
            if smaller is not None and (requested == "cooperative" or smaller.blocks > 1):
                plan = smaller
                continue
        if requested != "auto":
            raise RuntimeError(f"{VARIANT_ENV}={requested}: {reason}")
        limits = replace(limits, smem_optin=limits.smem_per_block)
        smaller = choose(batch, hidden, gates, itemsize, footprint, limits, "auto")
        plan = simple_plan(batch, hidden) if smaller == plan else smaller
    else:  # pragma: no cover - the simple variant always launches
        plan = simple_plan(batch, hidden)
        kernel, args = build(plan)
    kernel[plan.blocks, plan.threads, launch_stream(like), plan.smem](*args)
    return plan


def device_empty(like, shape):
    """An uninitialised array of ``shape`` and ``like``'s dtype where ``like`` lives (CuPy or NumPy)."""
    if type(like).__module__.startswith("cupy"):
        import cupy

        return cupy.empty(shape, dtype=like.dtype)
    return np.empty(shape, dtype=like.dtype)


def describe(plan):
    """A short text for a plan, e.g. 'tiled (tile 4, 16 blocks x 64 threads, 17408 B smem)'."""
    shape = {"tiled": f"tile {plan.tile}, ", "cooperative": f"{plan.units} units/block, {plan.splits} splits, "}
    return (f"{plan.variant} ({shape.get(plan.variant, '')}{plan.blocks} blocks x {plan.threads} threads, "
            f"{plan.smem} B smem)")
