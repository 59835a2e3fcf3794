"""A register-blocked matrix product for the CPU kernels' step products: out = X W.

The blas variant's step product (a share's [rows, K] states times a weight [K, N]) is small in rows
and has the same W at every step. OpenBLAS packs W on every call of its large-product path, and its
small-product kernels are for M·N·K <= 1e6. This product keeps a block of ROWS rows of out by
VECTORS vectors of columns (6 x 64 float32; where N leaves 32 columns over, 8 x 32 for them) in
registers over a strip of K, reading each vector of W once per block and each x once per vector:
all of the arithmetic in fused multiply-adds on 512-bit registers. Blocks of fewer rows (4, 2, 1,
past the last block of ROWS) keep as many sums, over phases of k. W is read as it lies or packed
(``packed``: the K rows of each block of COLUMNS columns one after the other, so that a block's
reads run through contiguous memory); the forward kernels take Wsᵀ, a copy in any case, so packed,
and the backward kernels Ws packed or, where a copy would weigh too much beside the states, as it
lies (cpu_variants, ``transposed_for``, ``blas_backward_weight``); either starting a cache line
where it can (``aligned_empty``). ``linalg_cpu.matmul`` takes it for large products too.

Measured on one core of a 2-vCPU AVX-512 VM with its first blocks, 8 x 32 (6 x 64 are 10-18 %
faster still: ROWS below) (float32, µs, OpenBLAS 0.3.30 SkylakeX / this product on packed W / on W as
it lies): [32,256]·[256,1024] 219 / 107 / 134-139, [32,1024]·[1024,256] 196 /
113 / 99-110, [64,512]·[512,512] 285 / 214 / 247-264, [16,512]·[512,512] 136 / 56 / 61-62,
[64,512]·[512,2048] 1360 / 924 / 1174-1223, [16,2048]·[2048,512] 734 / 278 / 375 (rows of W 2 KiB
apart: each of a strip on another page); [128,64]·[64,64] 7 / 7 / 7 (a small product: equal).

It is written in LLVM IR (llvmlite) and compiled once per process for the host CPU with 512-bit
vectors allowed: Numba compiles for LLVM's tuning of the host, which on this CPU prefers 256-bit
vectors and splits wider ones, halving the multiply-adds per cycle. The kernels call it by symbol
name (``product``), like SciPy's BLAS in ``linalg_cpu``, so their cached machine code stays valid.
It is used only where the host has AVX-512 (``AVAILABLE``; cpu_variants decides); elsewhere the
symbol still exists, so that the kernels link.
"""
import math

import llvmlite.binding as llvm
import numpy as np
from llvmlite import ir
from numba import njit, types

from . import cache  # noqa: F401 (before any function is compiled)

VECTOR_BYTES = 64  # 512-bit registers
COLUMNS = 2 * VECTOR_BYTES // 4  # columns of a panel of packed W (float32): N must be a multiple of it
# A block keeps ROWS rows of out by VECTORS vectors of columns (two panels) in registers: 24 of the 32
# registers, 4 more for a row of W and one for a value of X; where N leaves one panel over, blocks of
# TAIL_ROWS rows by its 2 vectors (16 registers). Measured in one process on one core, alternating,
# GFLOP/s, 8 x 2 everywhere / 6 x 4: [64,512]·[512,512] 148 / 170, [32,512]·[512,512] 147 / 167,
# [64,512]·[512,128] 153 / 181, [16,512]·[512,512] 143 / 160, [8,256]·[256,256] 156 / 172 (4 x 4 and
# 10 x 2 in between): per row of W in a block, 6 values of X and 4 vectors of W loaded for 24
# multiply-adds, against 8 and 2 for 16.
ROWS, VECTORS = 6, 4
TAIL_ROWS, TAIL_VECTORS = 8, 2
# rows of packed W a strip takes (4 x 64 bytes each): 32 KiB, to stay in a 48 KiB L1 while every block of
# rows reads it (strips of 64, 128 or all K rows: within 5 % at the shapes above)
STRIP = 32768 // (VECTORS * VECTOR_BYTES)

_I64 = ir.IntType(64)
_NAME = "gpubptt_register_gemm_f32"


def _loop(b, start, stop, step, body):
    """for (i = start; i < stop; i += step) body(i), all i64."""
    pre = b.block
    head, inside, after = b.append_basic_block("head"), b.append_basic_block("body"), b.append_basic_block("after")
    b.branch(head)
    b.position_at_end(head)
    i = b.phi(_I64)
    i.add_incoming(start, pre)
    b.cbranch(b.icmp_signed("<", i, stop), inside, after)
    b.position_at_end(inside)
    body(i)
    i.add_incoming(b.add(i, step), b.block)
    b.branch(head)
    b.position_at_end(after)


def _define(module):
    """void _NAME(X*, ldx, W*, ldw, jstep, out*, ldo, M, K, N, add): out[M,N] = X[M,K] W[K,N] in
    float32 (out += X W where ``add`` is not 0), N a multiple of COLUMNS, W[k, j] at W + j·jstep +
    k·ldw for j a multiple of COLUMNS (as it lies: jstep 1, ldw its row stride; packed: jstep K, ldw
    COLUMNS), strides in elements."""
    fty, itemsize = ir.FloatType(), 4
    width = VECTOR_BYTES // itemsize
    vty = ir.VectorType(fty, width)
    ptr = fty.as_pointer()
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [ptr, _I64, ptr, _I64, _I64, ptr] + [_I64] * 5), _NAME)
    X, ldx, W, ldw, jstep, O, ldo, M, K, N, add = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    fma = ir.Function(module, ir.FunctionType(vty, [vty] * 3), f"llvm.fmuladd.v{width}f{8 * itemsize}")
    zero = ir.Constant(vty, [ir.Constant(fty, 0.0)] * width)
    undef = ir.Constant(vty, ir.Undefined)
    splat = ir.Constant(ir.VectorType(ir.IntType(32), width), [0] * width)
    sums = [b.alloca(vty) for _ in range(max(ROWS * VECTORS, TAIL_ROWS * TAIL_VECTORS))]  # registers, by LLVM
    const = lambda v: ir.Constant(_I64, v)  # noqa: E731

    def vector_at(base, index):
        return b.bitcast(b.gep(base, [index]), vty.as_pointer())

    def block(k0, k1, r0, j0, rows, most, vectors):
        """out[r0:r0+rows, j0:j0+16·vectors] (+)= X[r0:r0+rows, k0:k1] W[k0:k1, j0:j0+16·vectors]: every
        block keeps most·vectors sums, those of fewer rows than ``most`` as many phases of k (k = k0 + p
        mod phases, added up at the end), so that as many multiply-adds are in flight whatever the
        rows. Vector c of a row of W lies in panel c // 2 (of COLUMNS columns) from j0."""
        phases = most // rows
        acc = lambda p, r, c: sums[(p * rows + r) * vectors + c]  # noqa: E731
        first = b.and_(b.icmp_signed("==", k0, const(0)), b.icmp_signed("==", add, const(0)))
        for r in range(rows):
            at = b.add(b.mul(b.add(r0, const(r)), ldo), j0)
            for c in range(vectors):
                start = b.select(first, zero, b.load(vector_at(O, b.add(at, const(c * width))), align=itemsize))
                b.store(start, acc(0, r, c))
                for p in range(1, phases):
                    b.store(zero, acc(p, r, c))

        def step(k, p):
            w = [b.load(vector_at(W, b.add(b.add(b.mul(b.add(j0, const(COLUMNS * (c // 2))), jstep), b.mul(k, ldw)),
                                           const(c % 2 * width))), align=itemsize) for c in range(vectors)]
            for r in range(rows):
                x = b.load(b.gep(X, [b.add(b.mul(b.add(r0, const(r)), ldx), k)]))
                xs = b.shuffle_vector(b.insert_element(undef, x, ir.Constant(ir.IntType(32), 0)), undef, splat)
                for c in range(vectors):
                    b.store(b.call(fma, [xs, w[c], b.load(acc(p, r, c))]), acc(p, r, c))

        whole = b.add(k0, b.mul(b.udiv(b.sub(k1, k0), const(phases)), const(phases)))
        _loop(b, k0, whole, const(phases), lambda k: [step(b.add(k, const(p)), p) for p in range(phases)])
        _loop(b, whole, k1, const(1), lambda k: step(k, 0))
        for r in range(rows):
            at = b.add(b.mul(b.add(r0, const(r)), ldo), j0)
            for c in range(vectors):
                total = b.load(acc(0, r, c))
                for p in range(1, phases):
                    total = b.fadd(total, b.load(acc(p, r, c)))
                b.store(total, vector_at(O, b.add(at, const(c * width))), align=itemsize)

    def rows_in_blocks(k0, k1, j0, most, vectors):
        start = const(0)
        for rows in (most, 4, 2, 1):  # as many blocks of ``most`` rows as fit, then of 4, 2, 1
            end = b.add(start, b.mul(b.udiv(b.sub(M, start), const(rows)), const(rows)))
            _loop(b, start, end, const(rows), lambda r0, rows=rows: block(k0, k1, r0, j0, rows, most, vectors))
            start = end

    def strips(k0):  # rows k0.. of W, each block of columns read from L1 by every block of rows
        k1 = b.select(b.icmp_signed("<", b.add(k0, const(STRIP)), K), b.add(k0, const(STRIP)), K)
        wide = b.sub(N, b.urem(N, const(VECTORS * width)))
        _loop(b, const(0), wide, const(VECTORS * width), lambda j0: rows_in_blocks(k0, k1, j0, ROWS, VECTORS))
        _loop(b, wide, N, const(TAIL_VECTORS * width),
              lambda j0: rows_in_blocks(k0, k1, j0, TAIL_ROWS, TAIL_VECTORS))

    _loop(b, const(0), K, const(STRIP), strips)
    b.ret_void()


def _compile():
    """The function compiled for the host with 512-bit vectors allowed, its symbol added to the process
    for Numba's linker. Returns the engine (kept alive: it owns the machine code)."""
    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    module = ir.Module("gpubptt_register_gemm")
    module.triple = llvm.get_process_triple()
    _define(module)
    features = llvm.get_host_cpu_features().flatten()
    if module.triple.startswith(("x86_64", "i686", "i386")):
        features += ",-prefer-256-bit"  # the tuning that would split 512-bit vectors (an x86 feature)
    machine = llvm.Target.from_triple(module.triple).create_target_machine(
        cpu=llvm.get_host_cpu_name(), features=features, opt=3, codemodel="jitdefault")
    parsed = llvm.parse_assembly(str(module))
    parsed.verify()
    builder = llvm.create_pass_builder(machine, llvm.create_pipeline_tuning_options(speed_level=3))
    builder.getModulePassManager().run(parsed, builder)
    engine = llvm.create_mcjit_compiler(parsed, machine)
    engine.finalize_object()
    llvm.add_symbol(_NAME, engine.get_function_address(_NAME))
    return engine


_ENGINE = _compile()
AVAILABLE = bool(llvm.get_host_cpu_features().get("avx512f", False))

_signature = types.void(types.voidptr, types.int64, types.voidptr, types.int64, types.int64, types.voidptr,
                        *[types.int64] * 5)
_product = types.ExternalFunction(_NAME, _signature)


def aligned_empty(shape, dtype):
    """An uninitialised NumPy array whose first value starts a cache line (VECTOR_BYTES): then every
    vector of W that a block loads lies in one line. NumPy's and Numba's arrays start 16 or 32 bytes
    into one, and a vector across two lines costs two reads: one thread running [rows, H]·[H, H]
    products in a chain, W packed on a line / 32 bytes off it, ns: H = 64, 1 row 92 / 129, 8 rows
    393 / 425; H = 256, 1 row 1872 / 2654, 8 rows 5992 / 6590; H = 512, 1 row 7453 / 11520, 8 rows
    24332 / 30389 (the alignment of X and out made no such difference). NumPy's, not Numba's, so
    that the benchmark's count of live buffers (tracemalloc) sees it."""
    n, itemsize = math.prod(shape), np.dtype(dtype).itemsize  # (np.prod: ~2 µs a call)
    buf = np.empty(n + VECTOR_BYTES // itemsize, dtype=dtype)
    skip = (-buf.ctypes.data) % VECTOR_BYTES // itemsize
    return buf[skip:skip + n].reshape(shape)


def aligned(W):
    """W itself when its first value starts a cache line (``aligned_empty``), else a copy that does:
    what the backward kernels read as it lies. Measured, the Elman backward kernel on one thread
    with Ws on a line / 16 or 32 bytes off it, µs: (T,B,H) = (1000,1,64) 129 / 154-156; (200,4,128)
    227 / 305-307; (100,16,256) 1413-1457 / 1614-1692; (50,64,512) 12438-12613 / 13912-14693
    (measured when the strips were 256 rows of K; strips of 128 gave no better on W off a line)."""
    if W.ctypes.data % VECTOR_BYTES == 0:
        return W
    out = aligned_empty(W.shape, W.dtype)
    out[...] = W
    return out


def packed(W):
    """W [K,N] as ``product`` reads it packed: [N/COLUMNS·K, COLUMNS], the K rows of each block of
    COLUMNS columns one after the other (each block's reads then run through contiguous memory: no
    page or cache set is revisited, as rows N floats apart were), starting a cache line. W may be a
    transposed view (the forward kernels pack Wsᵀ from Ws): no copy between. Measured, µs, [512,512]
    float32: 100 from W or from a transposed view (a loop by k then c; by c then k, tiled or not,
    215-390), a plain copy 42."""
    K, N = W.shape
    out = aligned_empty((N // COLUMNS * K, COLUMNS), W.dtype)
    pack(W, out)
    return out


@njit(cache=True)
def pack(W, out):
    """``packed`` into out [N/COLUMNS·K, COLUMNS], from a kernel (the units variant of LSTM and GRU:
    each thread packs its columns, which then lie in its own core's caches). Blocks of columns packed
    one after the other are the packing of those columns side by side."""
    K, N = W.shape
    for j in range(0, N - N % COLUMNS, COLUMNS):
        for k in range(K):
            for c in range(COLUMNS):
                out[j // COLUMNS * K + k, c] = W[k, j + c]


@njit(inline="always", cache=True)
def product(X, W, out, add=False):
    """out = X W (out += X W with ``add``), float32, for X [M,K], W [K,N] as it lies or as ``packed``
    gave it ([N/COLUMNS·K, COLUMNS]; the two are one layout when N = COLUMNS), out [M,N], every row
    of unit stride, N a multiple of COLUMNS (``cpu_variants.uses_register`` holds all of it)."""
    K = X.shape[1]
    if W.shape[0] == K:  # as it lies
        ldw, jstep = W.strides[0] // 4, 1
    else:
        ldw, jstep = COLUMNS, K
    _product(X.ctypes, X.strides[0] // 4, W.ctypes, ldw, jstep, out.ctypes, out.strides[0] // 4, X.shape[0], K,
             out.shape[1], 1 if add else 0)
