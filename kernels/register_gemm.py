"""A register-blocked matrix product for the CPU kernels' step products: out = X W, W row-major.

The blas variant's step product (a share's [rows, K] states times Ws [K, N]) is small in rows and
the same W every step. OpenBLAS packs W on every call of its large-product path, and its small-
product kernels are for M·N·K <= 1e6; measured on one core of a 2-vCPU AVX-512 VM (float32, µs,
OpenBLAS 0.3.30 SkylakeX / this product): [32,256]·[256,1024] 197 / 131, [32,1024]·[1024,256] 196 /
115, [64,512]·[512,512] 283 / 249, [16,512]·[512,512] 118 / 51, [32,128]·[128,512] 44 / 28,
[64,64]·[64,256] 19 / 13; [64,64]·[64,64] 3.4 / 3.2, [128,64]·[64,64] 6.7 / 6.6 (small products:
equal).

This product keeps a block of ROWS rows of out by 2 vectors of columns (8 x 32 float32) in registers
over all of K, reading each vector of W once per block and each x once per vector: the whole of the
arithmetic in fused multiply-adds on 512-bit registers, nothing packed. Rows past the last block of
ROWS run in blocks of 4, then 1 (a single row has 2 sums in flight, slower than BLAS: ``MIN_ROWS``).

It is written in LLVM IR (llvmlite) and compiled once per process for the host CPU with 512-bit
vectors allowed: Numba compiles for LLVM's tuning of the host, which on this CPU prefers 256-bit
vectors and splits wider ones, halving the multiply-adds per cycle. The kernels call it by symbol
name (``product``), like SciPy's BLAS in ``linalg_cpu``, so their cached machine code stays valid.
It is used only where the host has AVX-512 (``AVAILABLE``); elsewhere ``product`` is never reached
(cpu_variants decides) but the symbols still exist, so that the kernels link.
"""
import llvmlite.binding as llvm
from llvmlite import ir
from numba import njit, types

ROWS = 8  # rows of out a block keeps in registers (with 2 vectors of columns: 16 of the 32 registers)
VECTORS = 2  # vectors of columns a block keeps
VECTOR_BYTES = 64  # 512-bit registers
COLUMNS = VECTORS * VECTOR_BYTES // 4  # columns of out a block covers (float32): N must be a multiple of it
# rows of W a strip of the block's columns takes (2 x 64 bytes each): 32 KiB, to stay in a 48 KiB L1 while
# every block of rows reads it
STRIP = 32768 // (VECTORS * VECTOR_BYTES)
MIN_ROWS = 8  # fewer rows: BLAS (one row's 2 sums in flight: [2,256]·[256,256] 3.7 µs in BLAS, 8.3 here)

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
    """void _NAME(X*, ldx, W*, ldw, out*, ldo, M, K, N): out[M,N] = X[M,K] W[K,N] in float32, leading
    dimensions in elements, N a multiple of COLUMNS."""
    fty, itemsize = ir.FloatType(), 4
    width = VECTOR_BYTES // itemsize
    vty = ir.VectorType(fty, width)
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [fty.as_pointer(), _I64] * 3 + [_I64] * 3),
                     _NAME)
    X, ldx, W, ldw, O, ldo, M, K, N = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    fma = ir.Function(module, ir.FunctionType(vty, [vty] * 3), f"llvm.fmuladd.v{width}f{8 * itemsize}")
    zero = ir.Constant(vty, [ir.Constant(fty, 0.0)] * width)
    undef = ir.Constant(vty, ir.Undefined)
    splat = ir.Constant(ir.VectorType(ir.IntType(32), width), [0] * width)
    sums = [[b.alloca(vty) for _ in range(VECTORS)] for _ in range(ROWS)]  # promoted to registers by LLVM
    const = lambda v: ir.Constant(_I64, v)  # noqa: E731

    def vector_at(base, index):
        return b.bitcast(b.gep(base, [index]), vty.as_pointer())

    def block(k0, k1, r0, j0, rows):  # out[r0:r0+rows, j0:j0+columns] (+)= X[r0:r0+rows, k0:k1] W[k0:k1, j0:...]
        first = b.icmp_signed("==", k0, const(0))
        for r in range(rows):
            at = b.add(b.mul(b.add(r0, const(r)), ldo), j0)
            for c in range(VECTORS):
                start = b.select(first, zero, b.load(vector_at(O, b.add(at, const(c * width))), align=itemsize))
                b.store(start, sums[r][c])

        def step(k):
            w = [b.load(vector_at(W, b.add(b.add(b.mul(k, ldw), j0), const(c * width))), align=itemsize)
                 for c in range(VECTORS)]
            for r in range(rows):
                x = b.load(b.gep(X, [b.add(b.mul(b.add(r0, const(r)), ldx), k)]))
                xs = b.shuffle_vector(b.insert_element(undef, x, ir.Constant(ir.IntType(32), 0)), undef, splat)
                for c in range(VECTORS):
                    b.store(b.call(fma, [xs, w[c], b.load(sums[r][c])]), sums[r][c])

        _loop(b, k0, k1, const(1), step)
        for r in range(rows):
            at = b.add(b.mul(b.add(r0, const(r)), ldo), j0)
            for c in range(VECTORS):
                b.store(b.load(sums[r][c]), vector_at(O, b.add(at, const(c * width))), align=itemsize)

    def rows_in_blocks(k0, k1, j0):
        start = const(0)
        for rows in (ROWS, 4, 1):  # as many blocks of ROWS rows as fit, then of 4, then single rows
            end = b.add(start, b.mul(b.udiv(b.sub(M, start), const(rows)), const(rows)))
            _loop(b, start, end, const(rows), lambda r0, rows=rows: block(k0, k1, r0, j0, rows))
            start = end

    def strips(k0):  # the rows k0.. of W in strips of the block's columns, each read from L1 by every block of rows
        k1 = b.select(b.icmp_signed("<", b.add(k0, const(STRIP)), K), b.add(k0, const(STRIP)), K)
        _loop(b, const(0), N, const(VECTORS * width), lambda j0: rows_in_blocks(k0, k1, j0))

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

_signature = types.void(*[types.voidptr, types.int64] * 3, *[types.int64] * 3)
_product = types.ExternalFunction(_NAME, _signature)


@njit(inline="always", cache=True)
def applies(X, W, out):
    """Whether ``product`` takes these: AVAILABLE, float32, shapes that multiply into out's, at least
    MIN_ROWS rows and one K, N a multiple of COLUMNS, rows of unit stride that lie apart. (In float64
    it lost to OpenBLAS at most shapes: [64,512]·[512,512] 580 / 704 µs, [32,256]·[256,1024] 312 /
    368.)"""
    M, K, N = X.shape[0], X.shape[1], W.shape[1]
    return (AVAILABLE and X.itemsize == 4 and W.itemsize == 4 and out.itemsize == 4
            and W.shape[0] == K and out.shape[0] == M and out.shape[1] == N and M >= MIN_ROWS and K > 0
            and N % COLUMNS == 0 and X.strides[1] == 4 and W.strides[1] == 4 and out.strides[1] == 4
            and X.strides[0] % 4 == 0 and W.strides[0] % 4 == 0 and out.strides[0] % 4 == 0
            and X.strides[0] >= 4 * K and W.strides[0] >= 4 * N and out.strides[0] >= 4 * N)


@njit(inline="always", cache=True)
def product(X, W, out):
    """out = X W for 2-D arrays of which ``applies`` holds."""
    _product(X.ctypes, X.strides[0] // 4, W.ctypes, W.strides[0] // 4, out.ctypes, out.strides[0] // 4,
             X.shape[0], X.shape[1], W.shape[1])
