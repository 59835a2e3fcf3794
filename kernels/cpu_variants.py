"""How the ``*_cpu.py`` kernels split their work, chosen per call from the shape and the BLAS.

The sequences of a batch are independent, so each thread takes a share of them and runs the whole
time loop over it: one parallel region per call, no synchronisation per step. The variants differ in
how a share's recurrent products are formed:
``loops``: tiles of 4 sequences, the products written as register-blocked loops the compiler
vectorises (dot products on Ws in forward, sums of rows of Ws in backward).
``blas``: matrix products per step for the thread's whole slice, then the pointwise work: on a host
with AVX-512, in float32 with H a multiple of 32, one register-blocked product (``register_gemm``)
for most slices (``piece_rows``); else BLAS products, one or pieces of rows that fit a
small product (``piece_rows``; SciPy's BLAS through Numba's ``np.dot``). Where BLAS wins depends
on the BLAS (``choose``): with OpenBLAS's AVX-512 small-product kernels, at most shapes of more
than one sequence a thread; with others, for small H and many sequences a thread.

BLAS runs on the calling thread (``_numba_blas_on_one_thread``): concurrent calls from the kernels'
threads scale (measured on 2 cores: two threads each multiplying half of [6400,256]x[256,256], 3.4
ms against 6.6 ms for one thread alone), while a BLAS pool of its own would spin between calls and
starve the kernels' threads.

``GPUBPTT_CPU_VARIANT=loops|blas|units`` (read at each call) overrides the choice (``units``: the
gated cells' units variant wherever it can run, ``unit_slices``; the Elman cell takes it as
``auto``); ``auto`` or unset chooses.
``GPUBPTT_REGISTER_GEMM=0`` keeps BLAS for the blas variant's step products.
The thread count is Numba's (``numba.set_num_threads``, ``NUMBA_NUM_THREADS``); with one share
(one thread, or a single sequence) the kernels run without a parallel region.
"""
import functools
import os
import types

import numpy as np

from numba import get_num_threads, njit, types as nb_types
from numba.extending import overload

from . import activations, cache, register_gemm  # noqa: F401 (cache: before any function is compiled)
from .scalar import compile_scalar_functions
from .settings import env_choice

# Options of every CPU kernel and of the scalar math compiled for them. error_model="numpy": a float
# division by zero gives inf/nan as in NumPy instead of raising, which is what lets LLVM vectorise
# loops that divide (Python's ZeroDivisionError check is a branch per element). reassoc/contract:
# sums may be reordered and multiply-adds fused (vectorised dot products, FMAs). No assumption about
# NaN or Inf: non-finite values still propagate for the training loop's guard to see.
JIT_OPTIONS = dict(cache=True, error_model="numpy", fastmath={"reassoc", "contract"})

VARIANTS = ("auto", "loops", "blas", "units")


def variant_forced():
    """GPUBPTT_CPU_VARIANT (default auto), checked."""
    return env_choice("GPUBPTT_CPU_VARIANT", VARIANTS, "auto")


# Which variant is faster depends on the BLAS. Most OpenBLAS builds pack the weight for every product,
# which a step's few rows do not repay; the AVX-512 builds (core types below) take small products,
# M·N·K <= SMALL_PRODUCT, through kernels that pack nothing. So:
# - BLAS with small-product kernels: ``blas`` when each thread's step product [share, H]·[H, G·H] is
#   small, or fits small products in pieces (``piece_rows``, below PIECES_BELOW_SHARE sequences), or
#   its share has at least WIDE_SHARE sequences; never for one sequence a thread (forward +
#   BPTT at (B,T,D,H) = (1,50,128,512) 1.6 ms in loops, 2.0 in blas, though a step's product alone is
#   faster in BLAS from H = 128).
#   Measured on a 2-core AVX-512 VM (OpenBLAS 0.3.30 SkylakeX), per step, loops / blas µs: H = 64,
#   share 1 0.15 / 0.18, 2 0.28 / 0.15, 4 0.46 / 0.21, 16 1.8 / 0.70; H = 128, share 1 0.79 / 0.73, 4
#   1.7 / 0.92, 32 13.1 / 7.1; H = 256, share 1 3.0 / 2.1, 4 5.6 / 2.7, 8 12.6 / 5.2, 16 (no longer
#   small) 22 / 25, 64 100 / 57; H = 512, share 2 23 / 15, 4 22 / 81, 16 82 / 108, 32 175 / 162, 64
#   355 / 240. Forward + BPTT, loops / blas ms: tanh (B,T,D,H) = (128,50,128,512) 62-64 / 55, (32,200,
#   32,128) 6.1-6.3 / 5.0-5.6, (256,100,16,64) 9.0-9.4 / 7.2, (4,1000,64,256) 15-19 / 12-14,
#   (16,50,128,512) 8.2 / 14.2-14.6; LSTM (64,100,64,256) 65 / 70, (32,200,32,128) 19.9 / 22.2, (128,
#   50,128,512) 336 / 219; GRU (128,50,128,512) 275 / 172, (32,200,32,128) 18.0 / 15.1. At a share
#   of 32 (not small): tanh (64,100,64,256) 18.7 / 17.2-17.4, (64,50,128,512) 32.4-34.2 / 32.4-32.6;
#   LSTM (64,100,64,256) 70.8-71.1 / 70.5-72.2; GRU 51.5-57.6 / 51.9-52.3.
# - other BLAS: ``blas`` once each thread's share has at least BLAS_MIN_SHARE_PER_UNIT·H sequences: for
#   small H the tiles' dot products are too short to vectorise well and one BLAS product for the whole
#   share wins; elsewhere the loops win. Measured on an AVX2 2-core VM (Zen 3, OpenBLAS Zen kernels),
#   forward + backward recurrence on 2 threads, loops / blas ms in one process, alternating: (B,T,H) =
#   (256,100,64) 8.6 / 6.5, (128,100,64) 4.3 / 3.7, (128,100,16) 0.72 / 0.55, (256,100,128) 26.7 /
#   22.1, (1024,50,128) 54 / 40, (64,100,32) 0.58 / 0.58, (64,100,64) 1.44 / 1.66, (128,50,128) 4.4 /
#   4.4, (96,100,128) 6.5 / 7.0, (64,50,128) 3.1 / 3.9, (128,100,256) 28.5 / 30.5, (16,50,128) 0.98 /
#   2.3. (On an AVX-512 host with OpenBLAS held to its Haswell kernels, OPENBLAS_CORETYPE=Haswell,
#   whose loops were faster, the turn was at 4·H.)
SMALL_KERNEL_CORES = ("skylakex", "cooperlake", "sapphirerapids")
SMALL_PRODUCT = 1_000_000  # OpenBLAS's bound on M·N·K for its small-product kernels
WIDE_SHARE = 32
BLAS_MIN_SHARE_PER_UNIT = 1
TILE = 4  # sequences a thread advances together in the loops variant
# With small-product kernels, a share too large for one small product runs its step in pieces of a
# multiple of PIECE_MULTIPLE rows, as many as fit a small product, while the share is below
# PIECES_BELOW_SHARE (``piece_rows``): the large-product path packs Ws on every call, which a wide
# share repays and a narrower one does not. Measured on a 2-core AVX-512 VM (OpenBLAS 0.3.30
# SkylakeX), one thread, µs per sequence and step, one product of the share / pieces of m rows:
# (G, H, share) = (1, 256, 32) 1.34 / 0.93-0.98 (m = 4 or 8); (1, 256, 64) 1.0 / 0.98; (1, 256, 128)
# 0.89 / 0.98; (3, 256, 32) 3.6-3.9 / 2.2-3.0 (m = 4); (4, 128, 16) 1.68 / 0.93-1.06 (m = 4 or 8);
# (4, 128, 128) 0.78 / 0.93. Pieces of 2 or 3 rows, or of 15, ran 1.5-2.5x slower a sequence than
# pieces of 4 or 8 (H = 512: 9.7 against 3.7 for one product of 64).
PIECE_MULTIPLE = 4
PIECES_BELOW_SHARE = 64


def choose(batch, hidden, threads=None, gates=1, small_kernels=None, register=False):
    """'loops' or 'blas' for a recurrence over ``batch`` sequences of ``hidden`` units and ``gates``
    blocks of Ws on ``threads`` threads (Numba's count by default); ``small_kernels``: whether the
    BLAS has small-product kernels (default: as found, ``BLAS_SMALL_KERNELS``); ``register``: whether
    the register-blocked product (``register_gemm``) takes the step products (``uses_register``),
    which makes ``blas`` the choice where ``piece_rows`` gives it the share."""
    forced = variant_forced()
    if forced in ("loops", "blas"):
        return forced
    share = -(-batch // (get_num_threads() if threads is None else threads))
    if piece_rows(share, hidden, gates, small_kernels, register) == REGISTER:
        return "blas"
    if BLAS_SMALL_KERNELS if small_kernels is None else small_kernels:
        small = share * hidden * gates * hidden <= SMALL_PRODUCT
        pieces = piece_rows(share, hidden, gates, True) < share
        return "blas" if share > 1 and (small or pieces or share >= WIDE_SHARE) else "loops"
    return "blas" if share >= BLAS_MIN_SHARE_PER_UNIT * hidden else "loops"


def piece_rows(share, hidden, gates=1, small_kernels=None, register=False):
    """The rows of each product in the blas variant's step, for a thread's ``share`` of sequences:
    ``share`` itself for one BLAS product, REGISTER for one register-blocked product."""
    if register and (share >= REGISTER_MIN_SHARE or hidden <= REGISTER_SINGLE_MAX_HIDDEN):
        return REGISTER
    if not (BLAS_SMALL_KERNELS if small_kernels is None else small_kernels):
        return share
    product = gates * hidden * hidden
    rows = SMALL_PRODUCT // product // PIECE_MULTIPLE * PIECE_MULTIPLE
    if share * product <= SMALL_PRODUCT or rows == 0 or share >= PIECES_BELOW_SHARE:
        return share
    return rows


# The register-blocked product (register_gemm) against BLAS for the blas variant's step products,
# forward + BPTT, float32, 2 threads, register / BLAS (or loops) in one process alternating, ms
# (benchmarks/cpu-2core-2026-12-06-register-ab.txt): LSTM (B,T,D,H) = (64,100,64,256) 56 / 77,
# (128,50,128,512) 210 / 237, (64,100,512,512) 307 / 396; GRU (64,100,512,512) 266 / 320; tanh
# (64,100,512,512) 88 / 104, (128,50,128,512) 58 / 64, (32,200,32,128) 4.47 / 4.67; shares of 8 at
# H = 512, where the loops were chosen: tanh (16,50,128,512) 8.0 / 9.1, LSTM 42 / 44; small products
# about equal (tanh (256,100,16,64) 5.45 / 5.41). GPUBPTT_REGISTER_GEMM=0 (read at each call) keeps
# BLAS for every step product.
REGISTER = 0  # the blas variant's piece that stands for one register-blocked product of the whole share
# It takes every share of REGISTER_MIN_SHARE sequences or more, and a single sequence a thread up to
# H = REGISTER_SINGLE_MAX_HIDDEN. Forward + BPTT, 2 threads, one process alternating, register / the
# rules below (loops, or BLAS in pieces), ms: tanh (B,T,D,H) = (1,1000,8,64) 0.97 / 1.12, (2,500,32,
# 64) 0.74 / 0.88, (1,50,128,128) 0.35 / 0.35, (1,50,128,512) 2.24 / 1.86, (2,100,64,512) 4.46 / 3.24,
# (4,1000,64,256) 14.2 / 15.4, (4,200,64,128) 1.41 / 1.39, (6,100,32,128) 1.02 / 1.04, (8,50,128,512)
# 4.32 / 4.69, (12,50,128,512) 7.39 / 8.28, (4,100,64,512) 4.74 / 4.29, (4,100,64,1024) 37.7 / 57.0;
# LSTM (1,1000,8,64) 3.19 / 3.38, (1,50,128,128) 0.98 / 0.94, (1,100,64,256) 3.33 / 3.22, (1,50,128,
# 512) 20.6 / 17.2, (4,1000,64,256) 60.7 / 66.2, (4,200,64,128) 3.85 / 4.16, (6,100,32,128) 3.17 /
# 3.53, (4,100,64,512) 38.1 / 52.4, (8,50,128,512) 28.0 / 24.4; GRU (1,1000,8,64) 2.79 / 2.89, (1,50,
# 128,128) 1.00 / 0.86, (1,100,64,256) 3.64 / 3.42, (2,500,32,64) 2.33 / 2.50, (4,1000,64,256) 40.5 /
# 44.3, (4,200,64,128) 4.06 / 4.29, (6,100,32,128) 3.15 / 3.37. Alone, in a loop where each product
# reads the last one's result: [1,64]·[64,64] 92 ns (packed W on a cache line), 165 in BLAS, 149 in
# the loops' tile_products.
REGISTER_MIN_SHARE = 2
REGISTER_SINGLE_MAX_HIDDEN = 64


def register_enabled():
    """Whether the blas variant may take the register-blocked product: on a host with AVX-512, unless
    GPUBPTT_REGISTER_GEMM=0."""
    return register_gemm.AVAILABLE and env_choice("GPUBPTT_REGISTER_GEMM", ("0", "1"), "1") == "1"


def uses_register(Ws):
    """Whether the step products of a recurrence with Ws [G·H, H] go to register_gemm: where it is
    enabled, in float32, H a multiple of its COLUMNS (then so are the products' N, H and G·H; their
    operands are fresh arrays or rows of them, of unit stride)."""
    return register_enabled() and Ws.dtype == np.float32 and Ws.shape[1] % register_gemm.COLUMNS == 0


# The units variant (the gated cells' kernels, ``lstm_cpu``, ``gru_cpu``): the blas variant with the
# hidden units shared among the threads instead of the batch. At every step each thread forms, for
# the whole batch, the recurrent products of its units (its columns of the weight, register-blocked)
# and their pointwise work; each step is a parallel region of its own, whose end is where the
# threads meet (the next step's product reads every unit; a region costs ~1.4 µs with Numba's OpenMP
# layer). A thread then reads its part of the weight at every step, not all of it: where the batch
# is small the step product is bound by reading the weight, and a weight beyond a core's L2 cache
# (2 MiB here; LSTM's [4H,H] is 4 MiB at H = 512, GRU's 3 MiB) streams from L3 at every step.
# Chosen when the register-blocked product takes the step products, two threads or more get COLUMNS
# units or more each, and the weight is large (``unit_slices``): UNITS_IDLE_MIN_BYTES or more where
# the batch would leave a thread idle (fewer sequences than threads), else UNITS_MIN_BYTES or more
# and UNITS_MIN_BYTES_PER_ROW or more for each sequence of a thread's share. Each thread packs its
# columns itself (``pack_units``), so that they lie in its own core's caches (packed by the calling
# thread, LSTM forward + BPTT at (B,T,D,H) = (1,50,128,512) took 11.7 ms, 8.6 in the threads).
# Measured, forward + BPTT on 2 threads, one process alternating, the rules before the variant /
# the units, ms: LSTM (1,50,128,512) 16.4 / 8.4, (2,50,128,512) 16.4 / 10.4, (4,50,128,512) 20.8 /
# 13.7, (8,50,128,512) 25.8 / 20.6, (16,50,128,512) 43.1 / 37.3, (32,50,128,512) 71.5 / 70.6,
# (64,50,128,512) 116 / 127, (4,100,64,1024) 161 / 100, (32,50,128,1024) 269 / 221; H = 256 (a 1 MiB
# weight): (1,100,64,256) 4.25 / 3.45, (2,100,64,256) 4.64 / 4.58, (8,100,64,256) 9.8 / 13.2,
# (4,1000,64,256) 52 / 67; smaller: (1,50,128,128) 0.92 / 1.21, (16,50,128,128) 4.3 / 6.9,
# (1,1000,8,64) 3.8 / 8.8. GRU (2,50,128,512) 13.1 / 7.7, (4,50,128,512) 15.9 / 10.5,
# (8,50,128,512) 20.2 / 16.2, (16,50,128,512) 33.9 / 30.1, (32,50,128,512) 61.1 / 58.9;
# (2,100,64,256) 3.76 / 4.50, (4,100,64,256) 6.1 / 8.1; a 768 KiB weight, 11 rounds: (1,100,64,256)
# 2.94 / 3.13, (1,50,128,256) 1.99 / 2.24 (LSTM's 1 MiB: 4.85 / 3.95, 2.96 / 2.68); (1,50,128,128)
# 1.12 / 1.42; (1,50,128,512) 12.1 before the GRU had it, 6.0-6.4 after. The step products alone,
# 2 threads, µs a step, the batch shared / the units: [16,512]·[512,2048] 191 / 130,
# [4,512]·[512,2048] 138 / 63, [128,512]·[512,2048] 861 / 901; [1,512]·[512,2048] on one thread
# (the loops variant) 144, the units 37.
UNITS_IDLE_MIN_BYTES = 1 << 20
UNITS_MIN_BYTES = 2 << 20
UNITS_MIN_BYTES_PER_ROW = 256 << 10


def unit_slices(batch, Ws):
    """How many threads share the units of a recurrence over ``batch`` sequences with Ws [G·H, H] in
    the units variant, 1 where it does not run. GPUBPTT_CPU_VARIANT=units runs it wherever it can
    (the register-blocked product takes the step products and two threads get COLUMNS units each),
    loops or blas never; the cell without it (Elman) takes units as auto."""
    forced = variant_forced()
    threads = get_num_threads()
    slices = min(threads, Ws.shape[1] // register_gemm.COLUMNS)
    if forced in ("loops", "blas") or slices < 2 or not uses_register(Ws):
        return 1
    if forced == "units":
        return slices
    if batch < threads:
        return slices if Ws.nbytes >= UNITS_IDLE_MIN_BYTES else 1
    share = -(-batch // threads)
    return slices if Ws.nbytes >= max(UNITS_MIN_BYTES, share * UNITS_MIN_BYTES_PER_ROW) else 1


def unit_cuts(hidden, slices):
    """The units each of ``slices`` threads takes in the units variant: thread s the units
    cuts[s]..cuts[s+1]-1, whole blocks of COLUMNS, as even as they can be."""
    blocks = hidden // register_gemm.COLUMNS
    return np.array([register_gemm.COLUMNS * (s * blocks // slices) for s in range(slices + 1)], dtype=np.int64)


def units_weight(Ws, cuts):
    """Room for each thread's packed columns of Wsᵀ (the forward) or of Ws (the backward) in the
    units variant, which its thread packs there (``pack_units``): [slices, G·(most units)/COLUMNS·H,
    COLUMNS] either way. The backward's too is always a copy, unlike the blas variant's
    (``blas_backward_weight``): the engine makes the weight gradients, of Ws's size, once the kernel
    has returned, and as it lies a thread's rows of Ws are H floats apart (LSTM at B = 1, H = 512, a
    step's product 96 µs against 43 packed)."""
    most = int(np.diff(cuts).max())
    return register_gemm.aligned_empty((cuts.size - 1, most // register_gemm.COLUMNS * Ws.shape[0],
                                        register_gemm.COLUMNS), Ws.dtype)


def units_plan(batch, Ws):
    """For the units variant of a recurrence over ``batch`` sequences with Ws [G·H, H]: (the room for
    the threads' packed columns, ``units_weight``; the units' cuts, ``unit_cuts``), or None where it
    does not run (``unit_slices``)."""
    slices = unit_slices(batch, Ws)
    if slices < 2:
        return None
    cuts = unit_cuts(Ws.shape[1], slices)
    return units_weight(Ws, cuts), cuts


@njit(**JIT_OPTIONS)
def pack_units(Ws, W, cuts, s, forward):
    """Thread s's columns into W[s] (``units_weight``): forward, of Wsᵀ, gate after gate the columns
    of its units (``register_gemm.pack``: blocks of columns packed one after the other are their
    packing side by side); backward, of Ws. Either way its first (u1 - u0)/COLUMNS·G·H rows, which
    ``register_gemm.product`` takes (X Wsᵀ into G·(u1 - u0) columns forward, X Ws[:, u0:u1] backward)."""
    H = Ws.shape[1]
    u0, u1 = cuts[s], cuts[s + 1]
    rows = (u1 - u0) // register_gemm.COLUMNS * H  # a gate's in the forward's packing
    if forward:
        for g in range(Ws.shape[0] // H):
            register_gemm.pack(Ws[g * H + u0:g * H + u1].T, W[s, g * rows:(g + 1) * rows])
    else:
        register_gemm.pack(Ws[:, u0:u1], W[s, :rows * (Ws.shape[0] // H)])


@njit(inline="always", **JIT_OPTIONS)
def products(X, W, out, piece):
    """out = X W: one register-blocked product (piece = REGISTER; W as it lies or as ``transposed_for``
    packed it), else np.dot through BLAS in products of ``piece`` rows."""
    if piece == REGISTER:
        register_gemm.product(X, W, out)
        return
    n = X.shape[0]
    for a in range(0, n, piece):
        b = min(a + piece, n)
        np.dot(X[a:b], W, out[a:b])


def transposed_for(W, piece):
    """Wᵀ as the blas variant's ``products`` take it for ``piece`` (the forward kernels' Wsᵀ, Wxᵀ): a
    copy in any case, packed for the register-blocked product (REGISTER; ``register_gemm.packed``)."""
    return register_gemm.packed(W.T) if piece == REGISTER else transposed(W)


def blas_backward_weight(W, piece, states):
    """W as the blas variant's backward kernels take it for ``piece``, whose products read it as W,
    not Wᵀ: for the register-blocked product packed (``register_gemm.packed``) when it has
    PACK_MIN_COLUMNS columns or more and the copy is no larger than ``states``, the saved states the
    kernel reads; else on a cache line (``register_gemm.aligned``: a copy when it is not) while W has
    at most ALIGNED_COPY_MOST bytes; else as it lies. A weight-sized copy is a large part of the
    memory bound where the batch is small.

    Measured on 2 threads. The Elman backward kernel alone, in one process alternating, W as it lies
    / packed, ms: (B,T,H) = (128,50,512) 17.2 / 15.1, (64,50,512) 9.1 / 7.0, (16,50,512) 2.2 / 1.8,
    (64,100,256) 4.0 / 3.75, (32,200,128) 1.62 / 1.48. Forward + BPTT against the commit before
    (``benchmarks/cpu-2core-2026-12-07-seventh-ab.txt``, which also has the forward's faster
    packing): tanh within ±4 % (the kernel's gain is a few % of the whole, the copy is made per time
    chunk), LSTM (128,50,128,512) 1.09x, (4,1000,64,256) 1.14x, GRU (4,1000,64,256) 1.13x,
    (128,50,128,512) 1.04x. Live peak over the lower bound with a packed copy whatever the states,
    tanh (16,50,128,512): 1.51x against 1.20x (the rule keeps it out), (64,50,128,512) 1.33x against
    1.22x; LSTM (16,50,128,512) 1.39x against 1.12x. Aligned copies of a Ws off a cache line,
    forward + BPTT, no copy / a copy, ms: tanh (64,50,128,512) 28.7 / 28.8, (128,50,128,512) 54.2 /
    52.9, (16,50,128,512) 7.9 / 8.3; LSTM (64,100,64,256) 59.9 / 60.3, (16,50,128,512) 41.2 / 39.5."""
    if piece != REGISTER:
        return W
    if W.shape[1] >= PACK_MIN_COLUMNS and W.nbytes <= states.nbytes:
        return register_gemm.packed(W)
    return register_gemm.aligned(W) if W.nbytes <= ALIGNED_COPY_MOST else W


# Narrower rows of W lie close enough as they are for the copy to cost more than it gains: forward +
# BPTT, tanh, (B,T,D,H) = (1,1000,8,64) 0.742 ms as it lies, 0.752 packed; (1,200,32,64) 0.385 / 0.395;
# (2,500,32,64) 1.04 / 1.02
PACK_MIN_COLUMNS = 128


ALIGNED_COPY_MOST = 256 << 10


@overload(activations.single_precision, inline="always")
def _single_precision_from_type(one):
    """activations.single_precision for the CPU kernels: whether ``one`` is a float32, decided from its
    type when Numba types the call and inlined into the caller's IR, so the float32 / float64 branch
    of tanh and sigmoid is gone even in a function compiled alone, where ``one`` is an argument. The
    value test of activations.py folds only once the caller's constant is inlined by LLVM, which a
    function compiled apart (or loaded from Numba's cache) never is: such a step function kept the
    libm tanhf branch and its loops ran scalar (measured: the GRU forward at (64,100,·,256), 41 ms
    loaded from the cache against 18 ms compiled in the process). The CUDA kernels keep the value
    test: their device functions are always inlined."""
    flag = one == nb_types.float32
    return lambda one: flag


@functools.cache
def compile_activations():
    """activations.py's scalar functions compiled for the CPU kernels, single_precision decided by
    type (above): one set for the process, which every CPU kernel module and this one share."""
    return compile_scalar_functions(activations, njit(**JIT_OPTIONS),
                                    overrides={"single_precision": activations.single_precision})


_position = compile_activations().position


@njit(inline="always", **JIT_OPTIONS)
def units_forward_product(prev, Wp, s, u0, u1, gates, rec):
    """Thread s's step product in the forward units variant: the states before the step, prev [B,H],
    times its packed columns of Wsᵀ (``pack_units``) into the first gates·(u1 - u0) columns of
    rec[s] (``units_buffers``); returns that view."""
    r = rec[s, :, :gates * (u1 - u0)]
    register_gemm.product(prev, Wp[s, :(u1 - u0) // register_gemm.COLUMNS * gates * prev.shape[1]], r)
    return r


@njit(**JIT_OPTIONS)
def units_buffers(H0, Wp):
    """The forward units variant's buffers: the states [2, B, H], taken in turns (h[0] = H0 the
    first step's), and each thread's recurrent products [slices, B, G·(most units)]."""
    B, H = H0.shape
    h = np.empty((2, B, H), dtype=H0.dtype)
    h[0] = H0
    return h, np.empty((Wp.shape[0], B, Wp.shape[1] // H * register_gemm.COLUMNS), dtype=H0.dtype)


@njit(**JIT_OPTIONS)
def units_backward_buffers(B, Gs, H, slices, dtype):
    """The backward units variant's buffers: the gate gradients of the later step and of this one
    [2, B, G·H] (zeros: nothing comes after the last step), taken in turns; dh [B,H] (the later
    step's gate gradients times Ws, then dL/dh_t); the carried part [B,H] (zeros: LSTM's dL/dc
    through c_{t+1}, GRU's dh_{t+1} z_{t+1}); each thread's squared norms [slices, B]."""
    return (np.zeros((2, B, Gs), dtype=dtype), np.empty((B, H), dtype=dtype), np.zeros((B, H), dtype=dtype),
            np.zeros((slices, B), dtype=dtype))


@njit(inline="always", **JIT_OPTIONS)
def units_zero_past_end(grad, now, carried, i, b, u0, u1):
    """Backward step i of sequence b past its end in the units variant, thread's units u0..u1-1: no
    gradient, grad[i, b] and now[b] (the step's gate gradients) 0 in every gate's columns of those
    units, and so the carried part (``units_backward_rows``)."""
    H = carried.shape[1]
    zero = grad.dtype.type(0.0)
    for g in range(grad.shape[2] // H):
        for j in range(g * H + u0, g * H + u1):
            grad[i, b, j] = zero
            now[b, j] = zero
    for j in range(u0, u1):
        carried[b, j] = zero


@njit(inline="always", **JIT_OPTIONS)
def units_backward_rows(dH_out, Wb, later, s, u0, u1, flows, lengths, reverse, i, clip, dh, carried, sumsq,
                        carried_adds):
    """Thread s's part of backward step i in the units variant before its cells' pointwise work, for
    its units u0..u1-1 of every sequence: dh = the later step's gate gradients ``later`` times Ws
    (from its packed columns in Wb) or, where the step starts a chunk of the truncation (not
    ``flows``), 0 and so the ``carried`` part (LSTM's dL/dc through c_{t+1}, GRU's dh_{t+1} z_{t+1});
    then dL/dh_t = dh + dH_out (+ carried, ``carried_adds``: GRU) for those not past their end, and
    with clipping the squared norm of their share of the state gradient (dL/dh_t, and LSTM's carried
    dL/dc) into sumsq[s, b]."""
    if flows:
        register_gemm.product(later, Wb[s, :(u1 - u0) // register_gemm.COLUMNS * later.shape[1]], dh[:, u0:u1])
    else:
        dh[:, u0:u1] = 0
        carried[:, u0:u1] = 0
    for b in range(dh.shape[0]):
        L = lengths[b]
        if i < L:
            t = _position(i, L, reverse)
            for j in range(u0, u1):
                dh[b, j] += dH_out[t, b, j]
            total = dh[b, u0] - dh[b, u0]
            if carried_adds:
                for j in range(u0, u1):
                    dh[b, j] += carried[b, j]
            elif clip > 0:
                for j in range(u0, u1):
                    total += carried[b, j] * carried[b, j]
            if clip > 0:
                for j in range(u0, u1):
                    total += dh[b, j] * dh[b, j]
                sumsq[s, b] = total


@njit(inline="always", **JIT_OPTIONS)
def units_backward_end(first, Wb, s, u0, u1, dH0, carried, carried_adds):
    """Thread s's units of dL/dh0 = (step 0's gate gradients ``first``) Ws (+ carried, GRU's)."""
    register_gemm.product(first, Wb[s, :(u1 - u0) // register_gemm.COLUMNS * first.shape[1]], dH0[:, u0:u1])
    if carried_adds:
        for b in range(dH0.shape[0]):
            for j in range(u0, u1):
                dH0[b, j] += carried[b, j]


def plan(batch, Ws):
    """(variant, tile, shares) for a recurrence over ``batch`` sequences with Ws [G·H, H]: the
    variant, the sequences per tile (loops) or per BLAS product (blas), and the threads used."""
    threads = get_num_threads()
    hidden, gates = Ws.shape[1], Ws.shape[0] // Ws.shape[1]
    register = uses_register(Ws)
    variant = choose(batch, hidden, threads, gates, register=register)
    if variant == "loops":
        tile = max(1, min(TILE, -(-batch // threads)))
        return variant, tile, min(-(-batch // tile), threads)
    return variant, piece_rows(-(-batch // threads), hidden, gates, register=register), min(batch, threads)


@njit(**JIT_OPTIONS)
def share_of(share, shares, batch, tile):
    """[lo, hi): the sequences thread ``share`` of ``shares`` runs, a contiguous run of whole tiles
    (``tile`` = 1: an even split of ``batch`` rows, as the blas variant and linalg_cpu use). Its
    tiles advance together, one step at a time, so that each step reads and writes one contiguous
    block of the [T,B,·] arrays: measured on one core at (B,T,H) =
    (32,200,128), forward, 4.1 ms where each tile ran its whole time loop alone (the next step's rows
    lie B·H values further, in another page: a cache and a TLB miss every step), 1.9 ms here."""
    tiles = -(-batch // tile)
    return tile * (share * tiles // shares), min(batch, tile * ((share + 1) * tiles // shares))


def compile_both(fn):
    """(parallel, serial) compilations of one kernel: ``prange`` runs in parallel in the first and as
    a plain loop in the second, which spares a single share the parallel region's start-up.

    The serial one compiles a copy of the function named ``<name>_serial``: Numba's on-disk cache
    names its files after the function and keys its entries by signature, not by the ``parallel``
    flag, so two compilations of one function would share entries and whichever was compiled first
    would be loaded for both (seen: the parallel kernels running on one thread after the serial ones
    had been cached first)."""
    serial = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__ + "_serial", fn.__defaults__,
                                fn.__closure__)
    serial.__qualname__ = fn.__qualname__ + "_serial"
    serial.__doc__ = fn.__doc__
    return njit(parallel=True, **JIT_OPTIONS)(fn), njit(**JIT_OPTIONS)(serial)


def pick(kernels, shares):
    return kernels[0] if shares > 1 else kernels[1]


def _numba_blas_on_one_thread():
    """Run the BLAS that Numba's ``np.dot`` calls (SciPy's) on the calling thread, once for the process.

    The kernels' own threads are the parallelism, and a BLAS pool of its own would spin between
    calls and take the cores from them: measured on a 2-core machine, a serial kernel ran 40 times
    slower (8 ms instead of 0.2 ms) for ~50 ms after a two-thread OpenBLAS product. NumPy's BLAS is
    left alone when it is a library of its own (pip wheels: numpy.libs/); the engine calls only
    SciPy's (kernels/linalg_cpu.py). Needs threadpoolctl (a dependency); without it nothing is set.
    Returns whether that BLAS has small-product kernels (an OpenBLAS of a core type in
    SMALL_KERNEL_CORES; ``choose``).
    """
    try:
        import scipy.linalg.cython_blas  # noqa: F401 - loads the library Numba binds np.dot to
        from threadpoolctl import ThreadpoolController
    except ImportError:  # pragma: no cover
        return False
    controller = ThreadpoolController()
    ours = [lib for lib in controller.lib_controllers
            if lib.user_api == "blas" and "numpy" not in os.path.basename(os.path.dirname(lib.filepath))]
    if ours:
        controller.select(filepath=[lib.filepath for lib in ours]).limit(limits=1)
    return bool(ours) and all(str(getattr(lib, "architecture", "")).lower() in SMALL_KERNEL_CORES for lib in ours)


BLAS_SMALL_KERNELS = _numba_blas_on_one_thread()


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
    if env_choice("GPUBPTT_KEEP_FREED_MEMORY", ("0", "1"), "1") == "0":
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


# Rows past a sequence's end: the step functions skip them and the kernels call past_end /
# zero_past_end once a tile has any (elman_cpu says why). Row copies and fills are element loops: a
# slice assignment (``S[i, b] = prev[q]``) in a kernel's loop cost more (measured in the Elman
# forward step at (B,T,H) = (1,1000,64): 42 ns a step with it, 20 with the loop).
@njit(inline="always", **JIT_OPTIONS)
def copy_row(dst, t, b, src, r):
    """dst[t, b, :] = src[r, :]"""
    for j in range(dst.shape[2]):
        dst[t, b, j] = src[r, j]


@njit(inline="always", **JIT_OPTIONS)
def zero_row(a, r):
    """a[r, :] = 0 (a 2-D array)"""
    zero = a.dtype.type(0.0)
    for j in range(a.shape[1]):
        a[r, j] = zero


@njit(inline="always", **JIT_OPTIONS)
def zero_row3(a, t, b):
    """a[t, b, :] = 0 (a 3-D array)"""
    zero = a.dtype.type(0.0)
    for j in range(a.shape[2]):
        a[t, b, j] = zero


@njit(**JIT_OPTIONS)
def past_end(S0, lengths, reverse, S, i, first, prev, n):
    """Forward step i of sequences first..first+n-1, those past their end: the state stays put,
    S[i, b] = S0[b] in the reverse direction, prev[q] (the last state) forward. A function of its
    own, not inlined into the step (elman_cpu says why)."""
    for q in range(n):
        b = first + q
        if i >= lengths[b]:
            if reverse:
                copy_row(S, i, b, S0, b)
            else:
                copy_row(S, i, b, prev, q)


@njit(**JIT_OPTIONS)
def zero_past_end(lengths, i, first, n, grad, carried, offset=0):
    """Backward step i of sequences first..first+n-1, those past their end: no gradient,
    grad[i - offset, b] = 0 and carried[q] = 0 (what passes to the earlier step)."""
    for q in range(n):
        b = first + q
        if i >= lengths[b]:
            zero_row3(grad, i - offset, b)
            zero_row(carried, q)


TRANSPOSE_BLOCK = 8


@njit(**JIT_OPTIONS)
def _transpose_into(a, out):
    M, N = a.shape
    for i0 in range(0, M, TRANSPOSE_BLOCK):
        for j0 in range(0, N, TRANSPOSE_BLOCK):
            for j in range(j0, min(j0 + TRANSPOSE_BLOCK, N)):
                for i in range(i0, min(i0 + TRANSPOSE_BLOCK, M)):
                    out[j, i] = a[i, j]


def transposed(a):
    """aᵀ, C-contiguous, of a 2-D array: the kernels' weights in the other orientation. In blocks of
    8x8: NumPy's np.ascontiguousarray(a.T) took 350 µs for a 512x512 float32 (rows 2 KB apart fall
    into the same cache sets) and 2.7 ms for 2048x512; the blocks 160 µs and 650 µs."""
    out = np.empty((a.shape[1], a.shape[0]), dtype=a.dtype)
    _transpose_into(a, out)
    return out


@njit(**JIT_OPTIONS)
def tile_products(W, X, n, out):
    """out[q, j] = Σ_k W[j, k] X[q, k] for the first n rows of X: the recurrent products of a tile of
    sequences, each a dot product over contiguous memory that the compiler vectorises. A full tile
    (n = 4 = TILE) runs pairs of rows of W against its 4 sequences, 8 sums at once: each loaded
    vector of W serves 4 products and each of X 2 (a dot product at a time loads two vectors per
    product). Eight sums, not sixteen: with AVX2's 16 vector registers, 16 accumulators and the 8
    vectors they read spill (measured on an AVX2-only 2-core VM, float32, per full tile and step, H
    = 64 / 128 / 256: 0.64-0.71 / 2.1 / 7.5-9.4 µs in pairs against 0.91-1.4 / 3.1 / 11.5-13.4 µs
    in blocks of 4 rows). A smaller tile runs blocks of 4 rows of W against one sequence."""
    J, K = W.shape
    zero = out.dtype.type(0.0)
    if n == 4:
        pairs = J - J % 2
        for j in range(0, pairs, 2):
            a00 = a01 = a02 = a03 = a10 = a11 = a12 = a13 = zero
            for k in range(K):
                u, v = W[j, k], W[j + 1, k]
                x0, x1, x2, x3 = X[0, k], X[1, k], X[2, k], X[3, k]
                a00 += u * x0; a01 += u * x1; a02 += u * x2; a03 += u * x3  # noqa: E702
                a10 += v * x0; a11 += v * x1; a12 += v * x2; a13 += v * x3  # noqa: E702
            out[0, j], out[1, j], out[2, j], out[3, j] = a00, a01, a02, a03
            out[0, j + 1], out[1, j + 1], out[2, j + 1], out[3, j + 1] = a10, a11, a12, a13
        done = pairs
    else:
        done = J - J % 4
        for q in range(n):
            for j in range(0, done, 4):
                a0 = a1 = a2 = a3 = zero
                for k in range(K):
                    x = X[q, k]
                    a0 += W[j, k] * x; a1 += W[j + 1, k] * x; a2 += W[j + 2, k] * x; a3 += W[j + 3, k] * x  # noqa: E702
                out[q, j], out[q, j + 1], out[q, j + 2], out[q, j + 3] = a0, a1, a2, a3
    for j in range(done, J):  # the rows of W past the last block
        for q in range(n):
            acc = zero
            for k in range(K):
                acc += W[j, k] * X[q, k]
            out[q, j] = acc


@njit(**JIT_OPTIONS)
def row_products(W, X, n, out):
    """out[q, j] = Σ_k X[q, k] W[k, j] for the first n rows of X, W untransposed: the products as sums
    of W's rows, four at a time (loops over j the compiler vectorises). A full tile (n = 4) adds each
    loaded vector of 4 rows of W into all 4 sequences' sums; a smaller one runs a sequence at a time.
    It needs no transposed copy of W (as large as the gradient dWs). Measured per step, one core, float32,
    against tile_products on Wᵀ: a full tile, H = 64 / 128 / 256 / 512, 0.47 / 1.3 / 4.9 / 18.7 µs
    against 0.47 / 1.7 / 6.5 / 22.1 (AVX-512 VM); one sequence, H = 512 17.5 against 20.9 µs, 256 3.6
    against 3.7, 128 1.5 against 0.96, 64 0.29 against 0.20 (AVX2 VM)."""
    K, J = W.shape
    zero = out.dtype.type(0.0)
    quads = K - K % 4
    if n == 4:
        for q in range(4):
            for j in range(J):
                out[q, j] = zero
        for k in range(0, quads, 4):
            a0, a1, a2, a3 = X[0, k], X[0, k + 1], X[0, k + 2], X[0, k + 3]
            b0, b1, b2, b3 = X[1, k], X[1, k + 1], X[1, k + 2], X[1, k + 3]
            c0, c1, c2, c3 = X[2, k], X[2, k + 1], X[2, k + 2], X[2, k + 3]
            d0, d1, d2, d3 = X[3, k], X[3, k + 1], X[3, k + 2], X[3, k + 3]
            for j in range(J):
                w0, w1, w2, w3 = W[k, j], W[k + 1, j], W[k + 2, j], W[k + 3, j]
                out[0, j] += a0 * w0 + a1 * w1 + a2 * w2 + a3 * w3
                out[1, j] += b0 * w0 + b1 * w1 + b2 * w2 + b3 * w3
                out[2, j] += c0 * w0 + c1 * w1 + c2 * w2 + c3 * w3
                out[3, j] += d0 * w0 + d1 * w1 + d2 * w2 + d3 * w3
        for k in range(quads, K):
            for q in range(4):
                x = X[q, k]
                for j in range(J):
                    out[q, j] += x * W[k, j]
        return
    for q in range(n):
        for j in range(J):
            out[q, j] = zero
        for k in range(0, quads, 4):
            x0, x1, x2, x3 = X[q, k], X[q, k + 1], X[q, k + 2], X[q, k + 3]
            for j in range(J):
                out[q, j] += x0 * W[k, j] + x1 * W[k + 1, j] + x2 * W[k + 2, j] + x3 * W[k + 3, j]
        for k in range(quads, K):
            x = X[q, k]
            for j in range(J):
                out[q, j] += x * W[k, j]


# the backward loops take Ws as it is, in rows: always for full tiles of TILE sequences, and for
# smaller tiles when H is at least ROWS_MIN_HIDDEN. Forward + BPTT, rows / transposed, one process,
# alternating (2 cores, AVX2 VM): (B,T,D,H) = (1,50,128,128) 0.96 / 0.99 ms, peak memory 1.11x /
# 1.51x the lower bound; (1,50,128,512) 3.6 / 4.1 ms, 1.28x / 1.83x; (4,1000,64,256) 45.5 / 46.7 ms;
# at H = 64, (1,1000,8,64), 1.54 / 1.51 ms.
ROWS_MIN_HIDDEN = 128


def backward_weight(Ws, tile):
    """(W, transposed) for the backward loops: Ws itself when its tiles run ``row_products``, else Wsᵀ
    (a copy) for ``tile_products``. Ws [G·H, H]."""
    if tile == TILE or Ws.shape[1] >= ROWS_MIN_HIDDEN:
        return Ws, False
    return transposed(Ws), True


@njit(**JIT_OPTIONS)
def backward_products(W, transposed, X, n, out):
    """out[q] = X[q] Ws for q < n, from what backward_weight gave."""
    if transposed:
        tile_products(W, X, n, out)
    else:
        row_products(W, X, n, out)
