"""The ``cpu`` backend (``@njit`` kernels + NumPy BLAS) against the reference."""

import numpy as np
import pytest

import gpubptt
from gpubptt.kernels import register_gemm
from gpubptt.params import CELLS
from gpubptt.selfcheck import TOLERANCE

from conftest import assert_close, make_problem

SHAPES = [  # (T, B, D, H, O)
    (6, 4, 3, 8, 2),
    (5, 1, 2, 37, 3),  # B = 1, H not a multiple of 32
    (1, 3, 4, 5, 2),  # T = 1
    (600, 2, 2, 6, 1),  # long T, small H
]


@pytest.fixture(params=["loops", "blas", "blas-pieces"])
def variant(request, monkeypatch):
    """The two ways every cell's CPU kernels split their work (kernels/cpu_variants.py; the gated cells'
    third, units, is tested on its own below), forced in turn; the blas variant also with its step
    products in pieces smaller than a thread's share: on one thread, the whole batch its share, in
    pieces of B - 1 rows (a last piece shorter than the others from B = 3)."""
    import numba

    from gpubptt.kernels import cpu_variants

    monkeypatch.setenv("GPUBPTT_CPU_VARIANT", request.param.split("-")[0])
    if request.param != "blas-pieces":
        yield request.param
        return
    monkeypatch.setattr(cpu_variants, "piece_rows", lambda share, hidden, gates=1, small_kernels=None, register=False:
                        max(1, share - 1))
    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        yield request.param
    finally:
        numba.set_num_threads(threads)


def compare(cell, out, loss, steps, shape, dtype, s0=True, num_layers=1, bidirectional=False, lengths=None,
            **options):
    structure = dict(num_layers=num_layers, bidirectional=bidirectional)
    params, x, s0_, d = make_problem(*shape, dtype=dtype, loss=loss, seed=sum(shape), cell=cell, **structure)
    s0_ = s0_ if s0 else None
    if cell in ("identity", "relu") and shape[0] > 100:
        params["Ws"] *= 0.5  # keep a linear or ReLU recurrence from growing over 600 steps
    tol = TOLERANCE[np.dtype(dtype).name]
    kw = dict(structure, lengths=lengths)
    got = forward_outputs(params, x, s0_, cell, out, backend="cpu", **kw)
    assert got[0].dtype == got[1].dtype == dtype
    assert_forward_as_reference(got, tol, params, x, s0_, cell, out, **kw)
    L, g = gpubptt.bptt(params, x, d, s0_, cell, out, loss, steps, backend="cpu", **kw, **options)
    assert_bptt_as_reference(L, g, dtype, params, x, d, s0_, cell, out, loss, steps, **kw, **options)


def forward_outputs(*args, **kwargs):
    """gpubptt.forward's outputs with the final state and, for LSTM, the cells: Y, S, C and the final
    state read the steps past each sequence's end, which Y, S and the gradients do not."""
    lstm = (args[3] if len(args) > 3 else kwargs.get("cell", "tanh")) == "lstm"
    return gpubptt.forward(*args, return_state=True, return_cells=lstm, **kwargs)


def assert_forward_as_reference(got, tol, *args, **kwargs):
    """``got`` (from ``forward_outputs``) as the reference backend gives it for the same call."""
    want = forward_outputs(*args, backend="reference", **kwargs)
    names = ["Y", "S", "C", "final state"] if len(want) == 4 else ["Y", "S", "final state"]
    assert len(got) == len(want)
    for name, a, r in zip(names, got, want):
        assert_close(a, r, tol, name)


def assert_bptt_as_reference(L, g, dtype, *args, **kwargs):
    """L and every gradient g as the reference backend's gpubptt.bptt(*args, **kwargs) gives them, of
    ``dtype`` and the same shapes."""
    rL, rg = gpubptt.bptt(*args, backend="reference", **kwargs)
    tol = TOLERANCE[np.dtype(dtype).name]
    assert L.dtype == dtype
    assert_close(L, rL, tol, "L")
    assert set(g) == set(rg)
    for k in rg:
        pairs = zip(g[k], rg[k]) if isinstance(rg[k], tuple) else [(g[k], rg[k])]
        for a, r in pairs:
            assert a.dtype == dtype and a.shape == r.shape
            assert_close(a, r, tol, f"d{k}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "T{}B{}D{}H{}O{}".format(*s))
@pytest.mark.parametrize("cell", CELLS)
def test_cpu_matches_reference(cell, shape, dtype, variant):
    compare(cell, "identity", "squared", "all", shape, dtype)


STRUCTURES = [  # (cell, num_layers, bidirectional, lengths, options)
    ("lstm", 2, True, [5, 2, 4], {}), ("gru", 2, True, [5, 2, 4], {}), ("tanh", 3, True, [1, 5, 3], {}),
    ("lstm", 1, False, [5, 2, 4], dict(truncate=2, clip_step=0.05)),
    ("gru", 2, False, None, dict(truncate=3, clip_step=0.02)),
    ("relu", 1, True, [4, 5, 1], dict(clip_step=0.01)),
    ("lstm", 1, True, None, dict(truncate=1)),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", range(len(STRUCTURES)), ids=lambda i: "{}-L{}-bi{}-len{}-{}".format(*STRUCTURES[i]))
def test_cpu_layers_directions_lengths_truncation_clipping(case, dtype, variant):
    cell, num_layers, bidirectional, lengths, options = STRUCTURES[case]
    compare(cell, "identity", "squared", "all", (5, 3, 2, 6, 2), dtype, num_layers=num_layers,
            bidirectional=bidirectional, lengths=lengths, **options)


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("bias", [True, False])
def test_elman_forward_from_input(fused, bias, monkeypatch):
    """The Elman forward of a layer with one input part takes x and Wx: the blas variant forms each
    step's input product in its time loop (D <= FUSE_MAX_INPUT), or U = x Wxᵀ + bias is one product
    first; either way the reference's results, with and without biases, in both directions of
    sequences of several lengths (the reverse direction gathers each sequence's own input rows) and
    with two layers (the second takes the first's states)."""
    from gpubptt.kernels import elman_cpu

    monkeypatch.setenv("GPUBPTT_CPU_VARIANT", "blas")
    monkeypatch.setattr(elman_cpu, "FUSE_MAX_INPUT", 8 if fused else 0)
    monkeypatch.setattr(elman_cpu, "FUSE_MIN_SHARE", 1)
    ran = []

    def spy(kernel):
        return lambda *args: ran.append(args[6]) or kernel(*args)  # args[6]: reverse

    monkeypatch.setattr(elman_cpu, "_forward_input_kernels", tuple(spy(k) for k in elman_cpu._forward_input_kernels))
    for bidirectional, lengths in ((False, None), (True, [7, 2, 5, 1, 6])):
        params, x, s0, d = make_problem(7, 5, 3, 6, 2, dtype=np.float64, seed=3, bias=bias, num_layers=2,
                                        bidirectional=bidirectional)
        kw = dict(num_layers=2, bidirectional=bidirectional, lengths=lengths)
        tol = TOLERANCE["float64"]
        assert_forward_as_reference(forward_outputs(params, x, s0, backend="cpu", **kw), tol, params, x, s0, **kw)
        L, g = gpubptt.bptt(params, x, d, s0, backend="cpu", **kw)
        assert_bptt_as_reference(L, g, np.float64, params, x, d, s0, **kw)
    # fused, in forward and again in bptt: both unidirectional layers, then the bidirectional layer 0's
    # two directions (layer 1 there has two input parts: U first)
    assert ran == ([0, 0, 0, 0, 0, 1, 0, 1] if fused else [])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", range(len(STRUCTURES)), ids=lambda i: "{}-L{}-bi{}-len{}-{}".format(*STRUCTURES[i]))
def test_backward_in_rows_of_ws(case, dtype, monkeypatch):
    """The loops variant's backward on Ws as it is (cpu_variants.row_products, chosen for tiles of
    fewer than 4 sequences at large H; forced here at H = 6) gives the reference's gradients."""
    from gpubptt.kernels import cpu_variants

    monkeypatch.setenv("GPUBPTT_CPU_VARIANT", "loops")
    monkeypatch.setattr(cpu_variants, "ROWS_MIN_HIDDEN", 1)
    chosen = []
    real = cpu_variants.backward_weight
    monkeypatch.setattr(cpu_variants, "backward_weight", lambda Ws, tile: chosen.append(real(Ws, tile)) or chosen[-1])
    cell, num_layers, bidirectional, lengths, options = STRUCTURES[case]
    compare(cell, "identity", "squared", "all", (5, 3, 2, 6, 2), dtype, num_layers=num_layers,
            bidirectional=bidirectional, lengths=lengths, **options)
    assert chosen and all(W_transposed is False for _, W_transposed in chosen)


@pytest.mark.parametrize("cell", ["tanh", "lstm", "gru"])
def test_loops_with_full_tiles(cell, monkeypatch):
    """The loops variant with full tiles of 4 sequences and a shorter last one (B = 9: on two threads
    tiles of 4, 4, 1; on one, 4, 4, 1 too): the backward in rows of Ws (row_products' full-tile path,
    no transposed copy) gives the reference's gradients."""
    from gpubptt.kernels import cpu_variants

    monkeypatch.setenv("GPUBPTT_CPU_VARIANT", "loops")
    chosen = []
    real = cpu_variants.backward_weight
    monkeypatch.setattr(cpu_variants, "backward_weight", lambda Ws, tile: chosen.append((tile, real(Ws, tile)[1]))
                        or real(Ws, tile))
    compare(cell, "identity", "squared", "all", (5, 9, 3, 6, 2), np.float64, lengths=[5, 4, 5, 3, 5, 5, 1, 5, 2])
    assert chosen and all(tile == cpu_variants.TILE and not transposed for tile, transposed in chosen)


@pytest.mark.parametrize("n", [1, 2, 3, 4])
@pytest.mark.parametrize("K,J", [(8, 5), (7, 3), (3, 9)])
def test_row_products(n, K, J):
    from gpubptt.kernels import cpu_variants

    rng = np.random.default_rng(n * K * J)
    W = rng.standard_normal((K, J)).astype(np.float32)
    X = rng.standard_normal((4, K)).astype(np.float32)
    out = np.full((4, J), np.nan, np.float32)
    cpu_variants.row_products(W, X, n, out)
    assert_close(out[:n], X[:n].astype(np.float64) @ W, 1e-6, "row_products")
    assert np.isnan(out[n:]).all()  # rows past n untouched


needs_register = pytest.mark.skipif(not register_gemm.AVAILABLE,
                                    reason="the register-blocked product runs only on a host with AVX-512")


@needs_register
@pytest.mark.parametrize("layout", ["as it lies", "packed", "packed from Wᵀ"])
@pytest.mark.parametrize("M", [1, 3, 8, 11, 13, 20, 31])
@pytest.mark.parametrize("K,N", [(1, 32), (7, 96), (300, 32), (513, 64)])
def test_register_gemm_matches_numpy(M, K, N, layout):
    """register_gemm.product against NumPy in float64, on W as it lies (rows wider than N) or packed
    by register_gemm.packed, from W or from a transposed view of Wᵀ (as the forward kernels pack
    it): blocks of ROWS rows by VECTORS vectors (N = 64, 96), TAIL_ROWS by TAIL_VECTORS (a last 32
    columns), then of 4, 2 and 1 rows (M = 11: 6 + 4 + 1, 3: 2 + 1; 31: 8 x 3 + 4 + 2 + 1 for the
    last 32), K across strips of STRIP rows, X and out with leading
    dimensions wider than their rows, written and then added to (``add``); nothing outside out's
    columns written, W left as it was."""
    from numba import njit

    run = njit(lambda X, W, out, add: register_gemm.product(X, W, out, add))
    rng = np.random.default_rng(M * K + N)
    X = rng.standard_normal((M, K + 5)).astype(np.float32)[:, 2:K + 2]
    W = rng.standard_normal((K, N + 32)).astype(np.float32)[:, :N]
    source = np.ascontiguousarray(W.T) if layout == "packed from Wᵀ" else W
    before = source.copy()
    out = np.full((M, N + 7), np.nan, np.float32)
    operand = W if layout == "as it lies" else register_gemm.packed(source if layout == "packed" else source.T)
    run(X, operand, out[:, :N], False)
    assert_close(out[:, :N], X.astype(np.float64) @ W, 1e-6, "register product")
    run(X, operand, out[:, :N], True)
    assert_close(out[:, :N], 2 * (X.astype(np.float64) @ W), 1e-6, "register product added to out")
    assert np.isnan(out[:, N:]).all() and np.array_equal(source, before)


def off_line(a):
    """A copy of ``a`` whose data starts 16 bytes into a cache line (64 bytes)."""
    buf = np.empty(a.size + 32, a.dtype)
    start = ((-buf.ctypes.data) % 64 + 16) // a.itemsize
    out = buf[start:start + a.size].reshape(a.shape)
    out[...] = a
    return out


@needs_register
def test_register_gemm_weights_on_a_cache_line():
    """packed W, and W for the backward kernels (packed, or register_gemm.aligned), start a cache
    line: aligned gives W itself when it does, else an equal copy that does, W left as it was."""
    W = off_line(np.arange(96 * 128, dtype=np.float32).reshape(96, 128))
    assert W.ctypes.data % 64 == 16
    P = register_gemm.packed(W.T)
    assert P.ctypes.data % 64 == 0 and P.shape == (96 // 32 * 128, 32)
    before = W.copy()
    A = register_gemm.aligned(W)
    assert A is not W and A.ctypes.data % 64 == 0 and np.array_equal(A, W) and np.array_equal(W, before)
    assert register_gemm.aligned(A) is A
    # the backward kernels' Ws: packed from PACK_MIN_COLUMNS columns while the copy is no larger than
    # the states, else an aligned copy up to ALIGNED_COPY_MOST bytes; BLAS's pieces take it as it lies
    from gpubptt.kernels import cpu_variants

    most, register = cpu_variants.ALIGNED_COPY_MOST, cpu_variants.REGISTER
    for_W = cpu_variants.blas_backward_weight
    assert W.shape[1] == cpu_variants.PACK_MIN_COLUMNS
    states = np.zeros(W.size)  # float64: twice W's bytes
    Wp = for_W(W, register, states)
    assert Wp.ctypes.data % 64 == 0 and np.array_equal(Wp, register_gemm.packed(W)) and Wp.shape != W.shape
    small = states[:W.size // 2 - 1]  # 8 bytes short of W's
    for given, held in ((W[:, :64], states), (W, small)):  # narrower, or the states too small: aligned, as it lies
        A = for_W(given, register, held)
        assert A is not given and A.shape == given.shape and A.ctypes.data % 64 == 0 and np.array_equal(A, given)
    assert for_W(W, 4, states) is W
    large = off_line(np.zeros((most // 4 // 32 + 1, 32), np.float32))
    assert large.nbytes > most and for_W(large, register, small) is large
    assert np.array_equal(W, before)


@needs_register
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("batch,hidden", [(16, 32), (2, 32), (16, 128)])
@pytest.mark.parametrize("cell", ["tanh", "lstm", "gru"])
def test_cpu_register_product_matches_reference(cell, batch, hidden, threads, monkeypatch):
    """The cells' blas kernels with the register product (float32; 16 sequences: one share of 16, or
    two of 8 in parallel; 2 sequences: a share of 2, or two of one), both directions, sequences of
    different lengths, clipping and truncation, one Ws off a cache line: the same results as the
    reference, and as with BLAS's products. The backward kernels read Ws packed in blocks of columns
    at H = 128 (blas_backward_weight: the states outweigh it), else an aligned copy."""
    import numba

    from gpubptt.kernels import cpu_variants

    monkeypatch.delenv("GPUBPTT_CPU_VARIANT", raising=False)
    params, x, s0, d = make_problem(40, batch, 5, hidden, 2, dtype=np.float32, seed=4, cell=cell, bidirectional=True)
    params["Ws_l0"] = off_line(params["Ws_l0"])
    lengths = [40, 3, 7, 1, 9, 36, 2, 40, 5, 40, 6, 19, 4, 40, 11, 27][:batch]
    options = dict(bidirectional=True, lengths=lengths, clip_step=0.5, truncate=4)
    before = numba.get_num_threads()
    if threads > numba.config.NUMBA_NUM_THREADS:
        pytest.skip(f"needs {threads} Numba threads, this machine has {numba.config.NUMBA_NUM_THREADS}")
    real, packed = cpu_variants.blas_backward_weight, []  # whether each kernel's Ws was packed (a new shape)

    def spy(W, piece, states):
        out = real(W, piece, states)
        packed.append(out.shape != W.shape)
        return out

    monkeypatch.setattr(cpu_variants, "blas_backward_weight", spy)
    numba.set_num_threads(threads)
    try:
        assert cpu_variants.plan(batch, params["Ws_l0"]) == ("blas", cpu_variants.REGISTER, threads)
        L, g = gpubptt.bptt(params, x, d, s0, cell, backend="cpu", **options)
        monkeypatch.setenv("GPUBPTT_REGISTER_GEMM", "0")
        assert cpu_variants.plan(batch, params["Ws_l0"])[1] != cpu_variants.REGISTER
        bL, bg = gpubptt.bptt(params, x, d, s0, cell, backend="cpu", **options)
    finally:
        numba.set_num_threads(before)
    assert packed and any(packed) == (hidden == 128)
    rL, rg = gpubptt.bptt(params, x, d, s0, cell, backend="reference", **options)
    assert_close(L, rL, TOLERANCE["float32"], "L")
    for k in rg:
        assert_close(g[k], rg[k], TOLERANCE["float32"], f"d{k}")
        assert_close(g[k], bg[k], TOLERANCE["float32"], f"d{k} against BLAS's products")


@pytest.mark.parametrize("out,loss,steps", [
    ("tanh", "squared", "last"), ("sigmoid", "squared", "all"), ("softmax", "squared", "all"),
    ("softmax", "cross_entropy", "all"), ("softmax", "cross_entropy", "last"),
])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cpu_output_activations_and_losses(out, loss, steps, dtype, variant):
    compare("tanh", out, loss, steps, (4, 3, 2, 5, 4), dtype)
    compare("lstm", out, loss, steps, (4, 3, 2, 5, 4), dtype, lengths=[4, 1, 3])


def test_cpu_without_s0_and_without_bias():
    compare("tanh", "identity", "squared", "all", (4, 2, 3, 5, 2), np.float64, s0=False)
    params, x, _, d = make_problem(4, 2, 3, 5, 2, bias=False)
    L, g = gpubptt.bptt(params, x, d, backend="cpu")
    rL, rg = gpubptt.bptt(params, x, d, backend="reference")
    assert set(g) == {"Wx", "Ws", "Wy", "by", "x", "s0"}
    for k in rg:
        assert_close(g[k], rg[k], 1e-9, f"d{k}")


def test_rnn_class_matches_functions():
    model = gpubptt.RNN(input_size=3, hidden_size=16, output_size=2, cell="tanh", seed=0)
    x = np.random.default_rng(1).standard_normal((5, 4, 3)).astype(np.float32)
    d = np.zeros((5, 4, 2), np.float32)
    Y, S = model.forward(x)
    assert Y.shape == (5, 4, 2) and S.shape == (5, 4, 16) and Y.dtype == np.float32
    L, g = model.bptt(x, d)
    assert g["Ws"].shape == (16, 16)
    L2, g2 = gpubptt.bptt(model.params, x, d, backend=model.backend)
    assert L == L2 and all(np.array_equal(g[k], g2[k]) for k in g)
    assert gpubptt.RNN(3, 16, 2, seed=0).params["Ws"].tolist() == model.params["Ws"].tolist()  # seeded
    assert "hidden_size=16" in repr(model)


def test_variant_choice_and_override(monkeypatch):
    from gpubptt.kernels import cpu_variants

    monkeypatch.delenv("GPUBPTT_CPU_VARIANT", raising=False)
    monkeypatch.setenv("GPUBPTT_REGISTER_GEMM", "0")  # the BLAS rules first (the register product below)

    def choose(batch, hidden, threads, gates=1, small=False):
        return cpu_variants.choose(batch, hidden, threads, gates, small_kernels=small)

    # a BLAS that packs the weight for every product: BLAS once a thread's share is large against H
    per_unit = cpu_variants.BLAS_MIN_SHARE_PER_UNIT  # sequences per thread and hidden unit from which BLAS pays
    assert choose(per_unit * 16, 16, 1) == "blas" and choose(per_unit * 16 - 1, 16, 1) == "loops"
    assert choose(2 * per_unit * 64, 64, 2) == "blas"
    assert choose(2 * per_unit * 64 - 2, 64, 2) == "loops" and choose(64, 512, 2) == "loops"
    assert choose(1, 1024, 1) == "loops"
    # a BLAS with small-product kernels: small step products, pieces of them, or wide shares
    few = cpu_variants.SMALL_PRODUCT // (512 * 512)  # sequences a thread of a small [share,512]·[512,512]
    assert few < cpu_variants.PIECE_MULTIPLE  # too few for pieces
    assert choose(2 * few, 512, 2, small=True) == "blas" and choose(2 * few + 2, 512, 2, small=True) == "loops"
    most = cpu_variants.SMALL_PRODUCT // (256 * 256)
    assert choose(most, 256, 1, gates=4, small=True) == "loops" and choose(most // 4, 256, 1, gates=4, small=True) == "blas"
    rows = most // cpu_variants.PIECE_MULTIPLE * cpu_variants.PIECE_MULTIPLE  # a piece at H = 256
    assert choose(2 * (most + 1), 256, 2, small=True) == "blas"  # in pieces
    piece_rows = cpu_variants.piece_rows
    assert piece_rows(most + 1, 256, 1, True) == rows and piece_rows(most, 256, 1, True) == most  # small: one
    assert piece_rows(most + 1, 256, 1, False) == most + 1  # without small-product kernels: one product
    below = cpu_variants.PIECES_BELOW_SHARE
    assert piece_rows(below - 1, 256, 1, True) == rows and piece_rows(below, 256, 1, True) == below
    assert piece_rows(most + 1, 512, 1, True) == most + 1  # no multiple of PIECE_MULTIPLE rows fits
    wide = cpu_variants.WIDE_SHARE
    assert choose(2 * wide, 512, 2, small=True) == "blas" and choose(2 * wide - 2, 512, 2, small=True) == "loops"
    assert choose(1, 512, 1, small=True) == "loops" and choose(2, 64, 1, small=True) == "blas"  # one sequence a thread: loops
    assert choose(8, 256, 1, small=True) != choose(8, 256, 1)  # the two rules differ here; by default, as found:
    assert cpu_variants.choose(8, 256, 1) == choose(8, 256, 1, small=cpu_variants.BLAS_SMALL_KERNELS)
    # plan reads H and the gates from Ws [G·H, H]: an LSTM's step product is 4 times an Elman cell's
    monkeypatch.setattr(cpu_variants, "BLAS_SMALL_KERNELS", True)
    batch = most * cpu_variants.get_num_threads()  # a share of `most` sequences
    assert cpu_variants.plan(batch, np.empty((256, 256), np.float32))[0] == "blas"
    assert cpu_variants.plan(batch, np.empty((1024, 256), np.float32))[0] == "loops"
    # the register-blocked product: blas from REGISTER_MIN_SHARE sequences a thread (and for one
    # sequence a thread up to REGISTER_SINGLE_MAX_HIDDEN units), one product of the share
    least, narrow = cpu_variants.REGISTER_MIN_SHARE, cpu_variants.REGISTER_SINGLE_MAX_HIDDEN
    assert least == 2 and narrow >= 32  # so that the cases below are those described
    assert cpu_variants.choose(16, 512, 2, small_kernels=True, register=True) == "blas"
    assert choose(16, 512, 2, small=True) == "loops"  # where the BLAS rules differ
    assert cpu_variants.choose(2 * least, 512, 2, small_kernels=True, register=True) == "blas"
    assert cpu_variants.choose(2 * least - 2, 512, 2, small_kernels=True, register=True) == "loops"
    assert cpu_variants.choose(2, narrow, 2, small_kernels=True, register=True) == "blas"
    assert choose(2, narrow, 2, small=True) == "loops"
    assert cpu_variants.choose(2, 2 * narrow, 2, small_kernels=True, register=True) == "loops"
    assert cpu_variants.piece_rows(least, 256, 1, True, register=True) == cpu_variants.REGISTER
    assert cpu_variants.piece_rows(1, narrow, 1, True, register=True) == cpu_variants.REGISTER
    assert cpu_variants.piece_rows(least - 1, 256, 1, True, register=True) == least - 1
    f32, f64 = np.empty((64, 64), np.float32), np.empty((64, 64), np.float64)
    assert not cpu_variants.uses_register(f32)  # GPUBPTT_REGISTER_GEMM=0
    monkeypatch.setenv("GPUBPTT_REGISTER_GEMM", "1")
    assert cpu_variants.uses_register(f32) == cpu_variants.register_gemm.AVAILABLE
    assert not cpu_variants.uses_register(f64) and not cpu_variants.uses_register(np.empty((48, 48), np.float32))
    monkeypatch.setenv("GPUBPTT_REGISTER_GEMM", "yes")
    with pytest.raises(ValueError, match="GPUBPTT_REGISTER_GEMM: expected one of '0', '1', got 'yes'"):
        cpu_variants.plan(64, f32)
    monkeypatch.setenv("GPUBPTT_CPU_VARIANT", "loops")
    assert cpu_variants.choose(1024, 512) == "loops"
    monkeypatch.setenv("GPUBPTT_CPU_VARIANT", "fast")
    with pytest.raises(ValueError, match="GPUBPTT_CPU_VARIANT: expected one of 'auto', 'loops', 'blas', 'units', "
                                         "got 'fast'"):
        cpu_variants.choose(64, 64)


@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
@pytest.mark.parametrize("M,K,N", [(37, 50, 3), (1, 9, 4), (6, 1, 5)])
def test_matmul_shared_among_threads(M, K, N, trans_a, trans_b, monkeypatch):
    """Every way linalg_cpu.matmul shares a product among threads (rows, inner, one call) gives the
    product, whatever the operands' layouts; forced on small products by lowering the threshold."""
    from numba import get_num_threads

    from gpubptt.kernels import linalg_cpu

    monkeypatch.setattr(linalg_cpu, "MIN_SHARE_FLOPS", 1)
    monkeypatch.setattr(linalg_cpu, "MIN_INNER_ROWS", 1)
    rng = np.random.default_rng(M * K * N)
    a = rng.standard_normal((K, M) if trans_a else (M, K)).astype(np.float32)
    b = rng.standard_normal((N, K) if trans_b else (K, N)).astype(np.float32)
    a_before, b_before = a.copy(), b.copy()
    expected = (a.T if trans_a else a).astype(np.float64) @ (b.T if trans_b else b).astype(np.float64)
    shares = linalg_cpu._shares(M, K, N, K if trans_a else M, 4)
    assert shares == min(get_num_threads(), K if trans_a else M)
    out = linalg_cpu.matmul(a, b, trans_a=trans_a, trans_b=trans_b)
    assert out.shape == (M, N) and out.dtype == np.float32
    assert_close(out, expected, 1e-5, "matmul")
    dest = np.full((M, N), np.nan, np.float32)
    assert linalg_cpu.matmul(a, b, trans_a=trans_a, trans_b=trans_b, out=dest) is dest
    assert np.array_equal(dest, out)
    bias = rng.standard_normal(N).astype(np.float32)
    assert_close(linalg_cpu.matmul(a, b, trans_a=trans_a, trans_b=trans_b, bias=bias), expected + bias, 1e-5,
                 "matmul + bias")
    assert np.array_equal(a, a_before) and np.array_equal(b, b_before)


@needs_register
@pytest.mark.parametrize("shared", [False, True])
def test_matmul_register_blocked(shared, monkeypatch):
    """matmul's register-blocked path (float32, N a multiple of register_gemm.COLUMNS, a's rows of unit
    stride): pieces of rows (5 here, the last shorter), b packed from a transposed view or a column
    slice, a a column slice, written into and added to a window of a larger array, with a bias; one
    call or shared among threads. Products that do not qualify (K too small, N not a multiple, float64,
    aᵀ) go to BLAS."""
    from gpubptt.kernels import linalg_cpu

    monkeypatch.setattr(linalg_cpu, "REGISTER_MIN_ROWS", 1)
    monkeypatch.setattr(linalg_cpu, "REGISTER_PIECE_ROWS", 5)
    if shared:
        monkeypatch.setattr(linalg_cpu, "MIN_SHARE_FLOPS", 1)
    packed, real = [], linalg_cpu.register_gemm.packed
    monkeypatch.setattr(linalg_cpu.register_gemm, "packed", lambda W: packed.append(W.shape) or real(W))
    rng = np.random.default_rng(3)
    a = rng.standard_normal((23, 40)).astype(np.float32)[:, 3:33]  # [23,30], rows 40 apart
    for b, tb in ((rng.standard_normal((96, 30)).astype(np.float32), True),
                  (rng.standard_normal((30, 100)).astype(np.float32)[:, 2:66], False)):
        B = (b.T if tb else b).astype(np.float64)
        expected = a.astype(np.float64) @ B
        canvas = np.full((25, B.shape[1] + 7), 5.0, np.float32)
        window, before = canvas[1:-1, 3:-4], canvas.copy()
        assert linalg_cpu.matmul(a, b, trans_b=tb, out=window) is window
        assert_close(window, expected, 1e-5, "register-blocked matmul")
        linalg_cpu.matmul(a, b, trans_b=tb, out=window, accumulate=True)
        assert_close(window, 2 * expected, 1e-5, "register-blocked matmul accumulated")
        outside = np.ones(canvas.shape, bool)
        outside[1:-1, 3:-4] = False
        assert np.array_equal(canvas[outside], before[outside])
        bias = rng.standard_normal(B.shape[1]).astype(np.float32)
        assert_close(linalg_cpu.matmul(a, b, trans_b=tb, bias=bias), expected + bias, 1e-5, "with a bias")
    assert packed == [(30, 96)] * 3 + [(30, 64)] * 3
    others = [(a[:, :7], (7, 32), False), (a[:, :8], (8, 48), False), (a.astype(np.float64), (30, 32), False),
              (a, (23, 32), True)]  # K below REGISTER_MIN_INNER, N not a multiple, float64, aᵀ
    for x, shape, ta in others:
        y = rng.standard_normal(shape).astype(x.dtype)
        assert_close(linalg_cpu.matmul(x, y, trans_a=ta), (x.T if ta else x).astype(np.float64) @ y, 1e-5, "BLAS")
    assert len(packed) == 6


def test_matmul_shares_thin_products_by_their_bytes():
    """A product with little arithmetic on much memory (the output layer's with O = 1) is shared among
    threads for their bandwidth; a small one runs in one call."""
    from numba import get_num_threads

    from gpubptt.kernels import linalg_cpu

    M, K, N = 12800, 32, 1  # Z = S Wyᵀ: 0.8 MFLOP, one share by arithmetic; 1.7 MB
    assert 2 * M * K * N < 2 * linalg_cpu.MIN_SHARE_FLOPS
    assert linalg_cpu._shares(M, K, N, M, 4) == min(get_num_threads(), (M * K + K + M) * 4 // linalg_cpu.MIN_SHARE_BYTES)
    assert (M * K + K + M) * 4 // linalg_cpu.MIN_SHARE_BYTES >= 2
    assert linalg_cpu._shares(1000, 64, 1, 1000, 4) == 1  # 0.25 MB
    assert linalg_cpu._shares(M, K, N, 1, 4) == 1  # never more than the split allows


def _pieces_of(linalg_cpu, monkeypatch, size):
    """Every share's product in pieces of ``size`` K or rows (as with small-product kernels)."""
    from gpubptt.kernels import cpu_variants

    monkeypatch.setattr(cpu_variants, "BLAS_SMALL_KERNELS", True)
    monkeypatch.setattr(linalg_cpu, "PIECE_MULTIPLE", 1)
    for name in ("PIECE_MAX_INNER", "PIECE_MIN_INNER", "PIECE_MAX_ROWS", "PIECE_MIN_ROWS"):
        monkeypatch.setattr(linalg_cpu, name, size)
    assert linalg_cpu._piece(size + 1, 1, size, size) == size


@pytest.mark.parametrize("split", ["one call", "shared", "one call in pieces", "shared in pieces"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matmul_strided_operands_and_accumulate(split, dtype, monkeypatch):
    """matmul reads column slices as they lie (BLAS's leading dimension), writes into and adds to a
    column slice of a larger array and leaves the rest of it alone; one call or shared among threads
    (rows and inner shares, the partial limit lifted), each share whole or in pieces of K or rows
    (5, so that the last piece is shorter)."""
    from gpubptt.kernels import linalg_cpu

    if split.startswith("shared"):
        monkeypatch.setattr(linalg_cpu, "MIN_SHARE_FLOPS", 1)
        monkeypatch.setattr(linalg_cpu, "MIN_INNER_ROWS", 1)
        monkeypatch.setattr(linalg_cpu, "INNER_PARTIAL_SHARE", 1e9)
    if split.endswith("pieces"):
        _pieces_of(linalg_cpu, monkeypatch, 5)
    rng = np.random.default_rng(7)
    big_a = rng.standard_normal((41, 30)).astype(dtype)
    big_b = rng.standard_normal((41, 25)).astype(dtype)
    a, b = big_a[:, 3:15], big_b[:, 5:22]  # [41,12], [41,17]: no unit stride between rows
    tol = 1e-5 if dtype == np.float32 else 1e-12
    f64 = np.float64
    cases = [(a, b, True, False), (a.T, b, False, False), (a, b.T, True, True), (a.T, b.T, False, True)]
    for x, y, ta, tb in cases:
        X, Y = (x.T if ta else x).astype(f64), (y.T if tb else y).astype(f64)
        expected = X @ Y
        canvas = np.full((expected.shape[0] + 2, expected.shape[1] + 9), 5.0, dtype)
        window = canvas[1:-1, 4:-5]
        before = canvas.copy()
        assert linalg_cpu.matmul(x, y, trans_a=ta, trans_b=tb, out=window) is window
        assert_close(window, expected, tol, "matmul into a slice")
        outside = np.ones(canvas.shape, bool)
        outside[1:-1, 4:-5] = False
        assert np.array_equal(canvas[outside], before[outside])
        linalg_cpu.matmul(x, y, trans_a=ta, trans_b=tb, out=window, accumulate=True)
        assert_close(window, 2 * expected, tol, "matmul accumulated")
        assert np.array_equal(canvas[outside], before[outside])
    bias = np.arange(17, dtype=dtype)
    for x, y, ta in ((a, b, True), (a.T, b, False)):
        expected = (x.T if ta else x).astype(f64) @ y.astype(f64) + bias
        assert_close(linalg_cpu.matmul(x, y, trans_a=ta, bias=bias), expected, tol, "matmul + bias")
    assert_close(linalg_cpu.matmul(a[:0], b[:0], trans_a=True), np.zeros((12, 17)), 0, "K = 0")
    with pytest.raises(ValueError, match="accumulate needs out"):
        linalg_cpu.matmul(a, b, trans_a=True, accumulate=True)
    with pytest.raises(ValueError, match="do not multiply"):
        linalg_cpu.matmul(a, b)
    with pytest.raises(ValueError, match=r"out must be of shape \(12, 17\), got \(12, 16\)"):
        linalg_cpu.matmul(a, b, trans_a=True, out=np.empty((12, 16), dtype))
    with pytest.raises(ValueError, match="out must have a unit stride along its rows"):
        linalg_cpu.matmul(a, b, trans_a=True, out=np.empty((17, 12), dtype).T)


@pytest.mark.parametrize("M,N", [(5, 3), (40000, 7), (3000, 70)])
def test_column_sums(M, N, monkeypatch):
    """linalg_cpu.column_sums: the rows' sum in the array's dtype, shared among threads or not, of a
    column slice too (GRU's r and z block of the gates)."""
    from gpubptt.kernels import linalg_cpu

    rng = np.random.default_rng(M)
    a = rng.standard_normal((M, N + 2)).astype(np.float32)
    for min_share in (linalg_cpu.MIN_SUM_SHARE, 1):
        monkeypatch.setattr(linalg_cpu, "MIN_SUM_SHARE", min_share)
        for view in (a, a[:, :N]):
            got = linalg_cpu.column_sums(view)
            assert got.dtype == np.float32 and got.shape == (view.shape[1],)
            assert_close(got, view.astype(np.float64).sum(axis=0), 1e-6, "column sums")


def test_bptt_with_products_shared_among_threads(monkeypatch):
    """The engine's products split among threads (every product, however small) give the reference's
    gradients, bidirectional and stacked so that every product of the engine is split."""
    from gpubptt.kernels import linalg_cpu

    monkeypatch.setattr(linalg_cpu, "MIN_SHARE_FLOPS", 1)
    monkeypatch.setattr(linalg_cpu, "MIN_INNER_ROWS", 1)
    compare("tanh", "identity", "squared", "all", (7, 5, 3, 6, 2), np.float64, num_layers=2, bidirectional=True)


CHUNKED = [  # (cell, num_layers, bidirectional, lengths, options): T = 7 in chunks of 2 (of 3 under truncate=3)
    ("tanh", 2, True, None, {}),  # reverse direction chunked too (every length is T)
    ("tanh", 1, True, [7, 2, 5, 1], dict(clip_step=0.05)),  # forward chunked, some chunks past an end
    ("gru", 2, True, None, dict(clip_step=0.02)),
    ("gru", 1, False, [3, 7, 6, 4], dict(truncate=3)),
    ("relu", 1, False, None, dict(truncate=2)),
    ("lstm", 1, True, None, {}),  # one chunk: LSTM's c would need a kernel input
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", range(len(CHUNKED)), ids=lambda i: "{}-L{}-bi{}-len{}-{}".format(*CHUNKED[i]))
def test_bptt_in_time_chunks(case, dtype, monkeypatch):
    """Backward run a few steps at a time (the gradient reaching the states formed per chunk, passed
    on between chunks) gives the reference's gradients."""
    from gpubptt import engine

    from gpubptt.kernels import elman_cpu

    cell, num_layers, bidirectional, lengths, options = CHUNKED[case]
    monkeypatch.setattr(elman_cpu, "takes_top", lambda *_: False)  # the top layer in chunks too
    monkeypatch.setattr(engine, "CHUNK_BYTES", 1)
    monkeypatch.setattr(engine, "CHUNK_ROWS_PER_UNIT", 1)
    monkeypatch.setattr(engine, "MAX_CHUNKS", 4)
    planned, real = [], engine.time_chunks
    monkeypatch.setattr(engine, "time_chunks", lambda *a: planned.append(real(*a)) or planned[-1])
    compare(cell, "identity", "squared", "all", (7, 4, 3, 5, 2), dtype, num_layers=num_layers,
            bidirectional=bidirectional, lengths=lengths, **options)
    if cell == "lstm":
        assert planned == []
    else:
        per_call = num_layers * (2 if bidirectional and lengths is None else 1)
        assert len(planned) == per_call
        assert all(len(c) == (3 if options.get("truncate") == 3 else 4) for c in planned)


SEQUENCE = [  # (cell, num_layers, bidirectional, lengths, options, bias): one sequence of T = 23 in blocks of 4 steps
    ("tanh", 1, False, None, {}, True),
    ("tanh", 1, True, [17], dict(truncate=5, clip_step=0.05), True),  # reverse from its own end, windows across blocks
    ("relu", 2, False, [9], dict(clip_step=0.02), False),  # the top layer's input the layer below's states
    ("sigmoid", 1, True, None, dict(truncate=4), True),  # windows that are the blocks
    ("identity", 1, False, [1], {}, True),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", range(len(SEQUENCE)),
                         ids=lambda i: "{}-L{}-bi{}-len{}-{}-bias{}".format(*SEQUENCE[i]))
def test_backward_of_one_sequence(case, dtype, variant, monkeypatch):
    """The top layer's backward for one sequence in one call (elman_cpu.backward_top: its blocks'
    products inside the kernel, beside the next block's steps on two threads, after them on one: the
    "blas-pieces" variant runs on one thread) gives the reference's gradients, and is the one used."""
    from gpubptt.kernels import elman_cpu

    cell, num_layers, bidirectional, lengths, options, bias = SEQUENCE[case]
    monkeypatch.setattr(elman_cpu, "SEQUENCE_BLOCK_BYTES", 4 * 6 * np.dtype(dtype).itemsize)
    calls, real = [], elman_cpu.backward_top
    monkeypatch.setattr(elman_cpu, "backward_top", lambda *a: calls.append(a[4].shape) or real(*a))
    structure = dict(num_layers=num_layers, bidirectional=bidirectional)
    params, x, s0, d = make_problem(23, 1, 3, 6, 2, dtype=dtype, seed=case, cell=cell, bias=bias, **structure)
    L, g = gpubptt.bptt(params, x, d, s0, cell, backend="cpu", lengths=lengths, **structure, **options)
    assert_bptt_as_reference(L, g, dtype, params, x, d, s0, cell, lengths=lengths, **structure, **options)
    assert calls == [(23, 1, 6)] * (2 if bidirectional else 1)


TOP = [  # (cell, num_layers, bidirectional, lengths, options, bias, directions in one call): T = 11, B = 5
    ("tanh", 1, False, None, {}, True, 1),
    ("tanh", 1, True, None, dict(truncate=4, clip_step=0.05), True, 2),  # reverse too: every length is T
    ("relu", 2, False, [11, 4, 9, 1, 7], dict(clip_step=0.02), False, 1),  # input: the layer below's states
    ("sigmoid", 1, True, [11, 3, 11, 6, 10], dict(truncate=3), True, 1),  # reverse in the engine's steps
    ("identity", 1, False, [2, 1, 2, 2, 1], {}, True, 1),
]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("products", ["every step", "blocks"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", range(len(TOP)), ids=lambda i: "{}-L{}-bi{}-len{}-{}-bias{}".format(*TOP[i][:6]))
def test_backward_of_the_top_layer_in_one_call(case, dtype, products, threads, monkeypatch):
    """The top layer's backward over many sequences in one call (elman_cpu.backward_top: each
    thread's share of the batch with its products, at every step or in blocks of 2 steps, the last
    block of 1) gives the reference's gradients, and is the one used where every sequence's step is
    one time."""
    import numba

    from gpubptt.kernels import elman_cpu

    if threads > numba.config.NUMBA_NUM_THREADS:
        pytest.skip(f"needs {threads} Numba threads, this machine has {numba.config.NUMBA_NUM_THREADS}")
    cell, num_layers, bidirectional, lengths, options, bias, directions = TOP[case]
    monkeypatch.setenv("GPUBPTT_CPU_VARIANT", "blas")
    monkeypatch.setattr(elman_cpu, "SHARES_MEMORY_SHARE", 100.0)  # buffers that a problem this small outweighs
    monkeypatch.setattr(elman_cpu, "SHARES_BUFFER_SHARE", 100.0)
    monkeypatch.setattr(elman_cpu, "SHARES_BLOCK_ROWS", 1 if products == "every step" else 2 * -(-5 // threads))
    calls, real = [], elman_cpu.backward_top
    monkeypatch.setattr(elman_cpu, "backward_top", lambda *a: calls.append(a[4].shape) or real(*a))
    blocks, plan = [], elman_cpu._shares_plan
    monkeypatch.setattr(elman_cpu, "_shares_plan", lambda *a: blocks.append(plan(*a)[4]) or plan(*a))
    structure = dict(num_layers=num_layers, bidirectional=bidirectional)
    params, x, s0, d = make_problem(11, 5, 3, 6, 2, dtype=dtype, seed=case, cell=cell, bias=bias, **structure)
    before = numba.get_num_threads()
    numba.set_num_threads(threads)
    try:
        L, g = gpubptt.bptt(params, x, d, s0, cell, backend="cpu", lengths=lengths, **structure, **options)
    finally:
        numba.set_num_threads(before)
    assert_bptt_as_reference(L, g, dtype, params, x, d, s0, cell, lengths=lengths, **structure, **options)
    assert calls == [(11, 5, 6)] * directions
    assert blocks and set(blocks) == {1 if products == "every step" else 2}


@needs_register
@pytest.mark.parametrize("products", ["every step", "blocks"])
def test_backward_of_the_top_layer_with_register_input_products(products, monkeypatch):
    """backward_top over many sequences with dL/dx = delta Wx register-blocked (float32, D a multiple
    of register_gemm.COLUMNS), in blocks or at every step, written (forward direction) and added to
    (reverse): the reference's gradients."""
    import numba

    from gpubptt.kernels import cpu_variants, elman_cpu

    monkeypatch.setenv("GPUBPTT_CPU_VARIANT", "blas")
    monkeypatch.setattr(elman_cpu, "SHARES_MEMORY_SHARE", 100.0)
    monkeypatch.setattr(elman_cpu, "SHARES_BUFFER_SHARE", 100.0)
    monkeypatch.setattr(elman_cpu, "SHARES_BLOCK_ROWS", 1 if products == "every step" else 6)
    taken, real = [], cpu_variants.uses_register
    monkeypatch.setattr(cpu_variants, "uses_register", lambda W: taken.append(W.shape) or real(W))
    params, x, s0, d = make_problem(9, 5, 64, 32, 2, dtype=np.float32, seed=3, bidirectional=True)
    before = numba.get_num_threads()
    numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
    try:
        L, g = gpubptt.bptt(params, x, d, s0, "tanh", backend="cpu", bidirectional=True, truncate=4)
    finally:
        numba.set_num_threads(before)
    assert_bptt_as_reference(L, g, np.float32, params, x, d, s0, "tanh", bidirectional=True, truncate=4)
    assert taken.count((32, 64)) == 2 and real(params["Wx_l0"])  # Wx [H,D] of each direction


def test_which_backward_takes_the_top_layer(monkeypatch):
    """backward_top takes one sequence, on one thread up to SEQUENCE_ONE_THREAD_MAX_HIDDEN; many
    where every sequence's step is one time, the blas variant runs them in shares of SHARES_MIN_ROWS
    or more and its buffers weigh at most SHARES_MEMORY_SHARE of the states; the engine's chunks take
    the rest."""
    import numba

    from gpubptt.kernels import elman_cpu

    def arrays(T, B, D, H):
        return np.zeros((T, B, H), np.float32), np.zeros((H, H), np.float32), np.zeros((H, D), np.float32)

    limit = elman_cpu.SEQUENCE_ONE_THREAD_MAX_HIDDEN
    monkeypatch.delenv("GPUBPTT_CPU_VARIANT", raising=False)
    threads = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        assert elman_cpu.takes_top(*arrays(50, 1, 8, limit), False)
        assert not elman_cpu.takes_top(*arrays(50, 1, 8, limit + 32), True)
        assert elman_cpu.takes_top(*arrays(100, 256, 16, 64), True)
        assert not elman_cpu.takes_top(*arrays(100, 256, 16, 64), False)  # reverse, lengths below T
        monkeypatch.setenv("GPUBPTT_CPU_VARIANT", "loops")
        assert not elman_cpu.takes_top(*arrays(100, 256, 16, 64), True)
        monkeypatch.delenv("GPUBPTT_CPU_VARIANT")
        if numba.config.NUMBA_NUM_THREADS > 1:
            numba.set_num_threads(2)
            assert elman_cpu.takes_top(*arrays(50, 1, 8, limit + 32), True)
            assert elman_cpu.takes_top(*arrays(1000, 4, 64, 256), True)  # shares of 2
            assert not elman_cpu.takes_top(*arrays(500, 2, 32, 64), True)  # shares of 1
            assert not elman_cpu.takes_top(*arrays(50, 16, 128, 512), True)  # a thread's sums outweigh the states
            assert elman_cpu.takes_top(*arrays(50, 128, 128, 512), True)
    finally:
        numba.set_num_threads(threads)


UNITS = [  # (T, B, H, num_layers, bidirectional, lengths, options): D = 3, O = 2, float32
    (7, 3, 64, 1, False, None, {}),  # two threads of 32 units
    (9, 1, 96, 1, False, None, dict(clip_step=0.05)),  # one sequence; 32 and 64 units; clipping
    (8, 5, 64, 1, True, [8, 2, 5, 1, 8], dict(truncate=3, clip_step=0.05)),  # both directions, ends
    (6, 2, 64, 2, False, [6, 4], {}),  # the layer below's states as input
]


@pytest.mark.parametrize("case", range(len(UNITS)), ids=lambda i: "T{}-B{}-H{}-L{}-bi{}-len{}-{}".format(*UNITS[i]))
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_units_variant_matches_reference(cell, case, monkeypatch):
    """The gated cells' units variant (the hidden units shared among the threads at every step, each
    thread packing its own columns of the weight; GPUBPTT_CPU_VARIANT=units): the reference's
    outputs, states (LSTM's cells too), final states and gradients, with sequences past their end,
    truncation and clipping (whose norm sums over every thread's units), and every kernel of every layer
    and direction taken by it."""
    import importlib

    import numba

    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip(f"needs 2 Numba threads, this machine has {numba.config.NUMBA_NUM_THREADS}")
    if not register_gemm.AVAILABLE:
        pytest.skip("the units variant runs on the register-blocked product, which needs AVX-512")
    kernels = importlib.import_module(f"gpubptt.kernels.{cell}_cpu")
    T, B, H, num_layers, bidirectional, lengths, options = UNITS[case]
    monkeypatch.setenv("GPUBPTT_CPU_VARIANT", "units")
    monkeypatch.delenv("GPUBPTT_REGISTER_GEMM", raising=False)
    calls = []
    for name in ("_forward_units_kernel", "_backward_units_kernel"):
        real = getattr(kernels, name)
        monkeypatch.setattr(kernels, name, lambda *a, real=real, name=name: calls.append(name) or real(*a))
    structure = dict(num_layers=num_layers, bidirectional=bidirectional)
    params, x, s0, d = make_problem(T, B, 3, H, 2, dtype=np.float32, seed=case, cell=cell, **structure)
    before = numba.get_num_threads()
    numba.set_num_threads(2)
    try:
        got = forward_outputs(params, x, s0, cell, backend="cpu", lengths=lengths, **structure)
        L, g = gpubptt.bptt(params, x, d, s0, cell, backend="cpu", lengths=lengths, **structure, **options)
    finally:
        numba.set_num_threads(before)
    assert_forward_as_reference(got, TOLERANCE["float32"], params, x, s0, cell, lengths=lengths, **structure)
    assert_bptt_as_reference(L, g, np.float32, params, x, d, s0, cell, lengths=lengths, **structure, **options)
    runs = num_layers * (2 if bidirectional else 1)
    assert sorted(calls) == ["_backward_units_kernel"] * runs + ["_forward_units_kernel"] * 2 * runs


def test_which_recurrences_share_their_units(monkeypatch):
    """cpu_variants.unit_slices: the units variant where the register product takes the steps, two
    threads get 32 units or more each and the weight is large (1 MiB where a thread would idle,
    else 2 MiB and 256 KiB a sequence of a thread's share); GPUBPTT_CPU_VARIANT forces it or keeps it
    out; unit_cuts splits the units in whole blocks of 32."""
    import numba

    from gpubptt.kernels import cpu_variants

    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip(f"needs 2 Numba threads, this machine has {numba.config.NUMBA_NUM_THREADS}")
    if not register_gemm.AVAILABLE:
        pytest.skip("the units variant runs on the register-blocked product, which needs AVX-512")

    def lstm(H, dtype=np.float32, gates=4):
        return np.zeros((gates * H, H), dtype)

    monkeypatch.delenv("GPUBPTT_CPU_VARIANT", raising=False)
    monkeypatch.delenv("GPUBPTT_REGISTER_GEMM", raising=False)
    before = numba.get_num_threads()
    numba.set_num_threads(2)
    try:
        assert cpu_variants.unit_slices(1, lstm(512)) == 2
        assert cpu_variants.unit_slices(1, lstm(256)) == 2  # 1 MiB, one thread idle otherwise
        assert cpu_variants.unit_slices(1, lstm(256, gates=3)) == 1  # GRU's, 768 KiB
        assert cpu_variants.unit_slices(1, lstm(128)) == 1  # 256 KiB
        assert cpu_variants.unit_slices(2, lstm(256)) == 1  # a sequence a thread: within its L2
        assert cpu_variants.unit_slices(2, lstm(512, gates=3)) == 2  # 3 MiB: beyond it
        assert cpu_variants.unit_slices(32, lstm(512)) == 2  # 16 a thread: 256 KiB each
        assert cpu_variants.unit_slices(34, lstm(512)) == 1
        assert cpu_variants.unit_slices(128, lstm(1024)) == 2
        assert cpu_variants.unit_slices(1, lstm(512, np.float64)) == 1  # no register product
        assert cpu_variants.unit_slices(1, np.zeros((4 * 37, 37), np.float32)) == 1  # H not a multiple of 32
        auto = [cpu_variants.choose(B, 64, 2) for B in (1, 64)]
        monkeypatch.setenv("GPUBPTT_CPU_VARIANT", "units")
        assert cpu_variants.unit_slices(64, lstm(64)) == 2
        assert cpu_variants.unit_slices(64, lstm(32)) == 1  # 32 units: one block
        assert [cpu_variants.choose(B, 64, 2) for B in (1, 64)] == auto  # the other cells: as auto
        for forced in ("loops", "blas"):
            monkeypatch.setenv("GPUBPTT_CPU_VARIANT", forced)
            assert cpu_variants.unit_slices(1, lstm(512)) == 1
        monkeypatch.setenv("GPUBPTT_REGISTER_GEMM", "0")
        monkeypatch.delenv("GPUBPTT_CPU_VARIANT")
        assert cpu_variants.unit_slices(1, lstm(512)) == 1
        numba.set_num_threads(1)
        monkeypatch.delenv("GPUBPTT_REGISTER_GEMM")
        assert cpu_variants.unit_slices(1, lstm(512)) == 1
    finally:
        numba.set_num_threads(before)
    assert cpu_variants.unit_cuts(512, 2).tolist() == [0, 256, 512]
    assert cpu_variants.unit_cuts(96, 2).tolist() == [0, 32, 96]
    assert cpu_variants.unit_cuts(128, 3).tolist() == [0, 32, 64, 128]


@pytest.mark.parametrize("T,B,H,truncate,expected", [
    (100, 64, 4, 0, [(0, 100)]),  # 100 KB: one chunk of at least 64 KiB
    (100, 1024, 256, 0, [(0, 25), (25, 50), (50, 75), (75, 100)]),
    (10, 8192, 32, 3, [(0, 3), (3, 6), (6, 9), (9, 10)]),  # whole truncation windows
    (10, 8192, 32, 4, [(0, 4), (4, 8), (8, 10)]),
    (3, 8192, 32, 0, [(0, 1), (1, 2), (2, 3)]),
    (1000, 1, 64, 0, [(0, 334), (334, 668), (668, 1000)]),  # 256 KB: three chunks of at least 64 KiB
    (50, 1, 512, 0, [(0, 50)]),  # 100 KB: one
    (50, 16, 512, 0, [(0, 17), (17, 34), (34, 50)]),  # 1.6 MB in chunks of at least H / 2 rows
    (50, 8, 512, 0, [(0, 50)]),  # 0.8 MB, but a chunk of H / 2 rows would be most of it
    (50, 64, 512, 0, [(0, 13), (13, 26), (26, 39), (39, 50)]),
])
def test_time_chunks(T, B, H, truncate, expected):
    """Each chunk at least CHUNK_BYTES of the gradient and CHUNK_ROWS_PER_UNIT·H rows, at most
    MAX_CHUNKS, whole truncation windows."""
    from gpubptt import engine

    assert engine.time_chunks(T, B, H, 4, truncate) == expected


@pytest.mark.parametrize("shape", [(1, 1), (3, 17), (64, 64), (1024, 256), (9, 8)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_transposed(shape, dtype):
    from gpubptt.kernels import cpu_variants

    a = np.random.default_rng(sum(shape)).standard_normal(shape).astype(dtype)
    before = a.copy()
    t = cpu_variants.transposed(a)
    assert t.flags.c_contiguous and t.dtype == dtype and np.array_equal(t, a.T) and np.array_equal(a, before)


@pytest.mark.parametrize("module", ["elman_cpu", "lstm_cpu", "gru_cpu"])
def test_parallel_and_serial_kernels_cached_apart(module):
    """compile_both's two compilations of a kernel keep separate entries in Numba's on-disk cache:
    sharing them, the serial code was loaded for the parallel kernel and ran on one thread."""
    import importlib

    kernels = importlib.import_module(f"gpubptt.kernels.{module}")
    for table in (kernels._forward_kernels, kernels._backward_kernels):
        for parallel, serial in table.values():
            assert parallel.targetoptions.get("parallel") and not serial.targetoptions.get("parallel")
            assert parallel._cache._cache_file._index_name != serial._cache._cache_file._index_name
            assert serial.py_func.__code__ is parallel.py_func.__code__  # the same kernel, compiled twice


def test_float32_tanh_branch_decided_by_type():
    """The CPU kernels' float32 tanh is the rational one whatever the caller: compiled alone, with
    ``one`` an argument (as a step function compiled apart, or loaded from Numba's cache, sees it),
    its code has no call to libm's tanhf, the float64 branch (which kept such loops scalar)."""
    import math

    from numba import njit

    from gpubptt.kernels import cpu_variants, elman_cpu

    tanh = elman_cpu._scalar.tanh
    fresh = njit(**{k: v for k, v in cpu_variants.JIT_OPTIONS.items() if k != "cache"})(tanh.py_func)
    assert abs(fresh(np.float32(0.5), np.float32(1.0)) - math.tanh(0.5)) < 1e-6
    assert "tanhf" not in fresh.inspect_llvm(fresh.signatures[0])
    assert fresh(0.5, 1.0) == math.tanh(0.5)  # float64 keeps math.tanh


@pytest.mark.parametrize("seed", range(4))
def test_random_combinations_of_every_option_match_the_reference(variant, seed):
    """Seeded random draws over every option at once (cell, layers, directions, bias, output activation
    and loss, loss_steps (one k for all or one per sequence), lengths, truncate, clip_step, s0, odd sizes),
    float64, each against the reference: the combinations the grids above do not enumerate."""
    rng = np.random.default_rng(seed)
    for case in range(40):
        cell = str(rng.choice(CELLS))
        T, B, D, H, O = (int(rng.choice(c)) for c in ([1, 2, 5, 16], [1, 2, 3, 7], [1, 3, 9], [1, 5, 32, 40],
                                                     [1, 3]))
        output_activation = str(rng.choice(["identity", "tanh", "sigmoid", "softmax"]))
        loss = "cross_entropy" if output_activation == "softmax" and rng.random() < 0.5 else "squared"
        structure = dict(num_layers=int(rng.integers(1, 3)), bidirectional=bool(rng.random() < 0.5))
        params, x, s0, d = make_problem(T, B, D, H, O, loss=loss, seed=int(rng.integers(1 << 30)),
                                        bias=bool(rng.random() < 0.7), cell=cell, **structure)
        r = rng.random()
        options = dict(
            cell=cell, output_activation=output_activation, loss=loss, **structure,
            loss_steps="all" if r < 0.5 else ("last" if r < 0.7 else (int(rng.integers(1, T + 1)) if r < 0.85 else
                                                                        rng.integers(0, T + 2, B))),
            lengths=rng.integers(1, T + 1, B) if rng.random() < 0.5 else None,
            truncate=int(rng.integers(1, T + 1)) if rng.random() < 0.25 else None,
            clip_step=float(rng.uniform(0.05, 1.0)) if rng.random() < 0.25 else None)
        s0 = s0 if rng.random() < 0.5 else None
        what = f"case {case}: T,B,D,H,O={T, B, D, H, O}, {options}"
        L_ref, g_ref = gpubptt.bptt(params, x, d, s0, backend="reference", **options)
        L, g = gpubptt.bptt(params, x, d, s0, backend="cpu", **options)
        assert_close(L, L_ref, TOLERANCE["float64"], f"{what}: loss", atol=1e-12)
        assert set(g) == set(g_ref), what
        for key in g_ref:
            assert_close(g[key], g_ref[key], TOLERANCE["float64"], f"{what}: grads[{key!r}]", atol=1e-12)


def test_every_cached_kernel_notices_a_change_in_any_kernel_file(tmp_path):
    """Numba stamps a cached function with its own file only: a change in a function it calls from
    another file (an upgrade, an edit) kept the old machine code. Every cached CPU kernel's stamp holds
    the digest of all the kernel files, which moves with any one of them."""
    import importlib
    import shutil
    import types

    from numba.core.dispatcher import Dispatcher

    from gpubptt.kernels import cache

    assert cache.INSTALLED
    found = []
    for name in ("cpu_variants", "linalg_cpu", "register_gemm", "optim_cpu", "elman_cpu", "lstm_cpu", "gru_cpu"):
        module = importlib.import_module(f"gpubptt.kernels.{name}")
        for value in vars(module).values():
            for d in vars(value).values() if isinstance(value, types.SimpleNamespace) else (value,):
                impl = getattr(getattr(d, "_cache", None), "_impl", None)
                if isinstance(d, Dispatcher) and impl is not None:
                    found.append(d)
                    assert type(impl.locator).__module__ == cache.__name__, (name, d)
                    assert impl.locator.get_source_stamp()[1] == cache.DIGEST
    assert len(found) > 50, len(found)
    copy = tmp_path / "kernels"
    shutil.copytree(cache.HERE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / ".#activations.py").symlink_to(tmp_path / "nowhere")  # an editor's lock file: not a source
    assert cache.sources_digest(copy) == cache.DIGEST
    (copy / "activations.py").write_text((copy / "activations.py").read_text() + "\n# changed\n")
    assert cache.sources_digest(copy) != cache.DIGEST
