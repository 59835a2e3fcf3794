"""The ``cuda`` backend's kernels in Numba's CUDA simulator (second tier: NUMBA_ENABLE_CUDASIM=1).

The simulator runs each GPU thread as a Python thread: sizes stay tiny.
"""
import numpy as np
import pytest

import gpubptt
from gpubptt.selfcheck import TOLERANCE

from conftest import assert_close, make_problem

pytestmark = pytest.mark.cudasim


def test_auto_picks_cuda_under_the_simulator():
    be = gpubptt.backend.resolve("auto", on_device=False)
    assert be.name == "cuda" and "simulator" in be.reason and be.xp is np


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cell,out,loss,steps,shape", [
    ("tanh", "identity", "squared", "all", (4, 2, 3, 5, 2)),
    ("relu", "softmax", "cross_entropy", "last", (3, 1, 2, 33, 3)),  # H > 32: two strides of a warp
    ("sigmoid", "tanh", "squared", "all", (1, 2, 2, 3, 1)),  # T = 1
])
def test_cuda_kernels_match_reference(cell, out, loss, steps, shape, dtype):
    params, x, s0, d = make_problem(*shape, dtype=dtype, loss=loss, seed=7)
    tol = TOLERANCE[np.dtype(dtype).name]
    Y, S = gpubptt.forward(params, x, s0, cell, out, backend="cuda")
    rY, rS = gpubptt.forward(params, x, s0, cell, out, backend="reference")
    assert isinstance(Y, np.ndarray) and Y.dtype == dtype
    assert_close(Y, rY, tol, "Y")
    assert_close(S, rS, tol, "S")
    L, g = gpubptt.bptt(params, x, d, s0, cell, out, loss, steps, backend="cuda")
    rL, rg = gpubptt.bptt(params, x, d, s0, cell, out, loss, steps, backend="reference")
    assert_close(L, rL, tol, "L")
    for k in rg:
        assert_close(g[k], rg[k], tol, f"d{k}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cell,num_layers,bidirectional,lengths,options", [
    ("lstm", 2, True, [4, 2], dict(clip_step=0.05)),
    ("gru", 1, True, [1, 4], dict(truncate=2, clip_step=0.02)),
    ("tanh", 2, False, [3, 4], dict(truncate=3)),
])
def test_cuda_gated_stacked_bidirectional_kernels_match_reference(cell, num_layers, bidirectional, lengths, options,
                                                                   dtype):
    kw = dict(num_layers=num_layers, bidirectional=bidirectional, lengths=lengths)
    params, x, s0, d = make_problem(4, 2, 2, 3, 2, dtype=dtype, seed=3, cell=cell, num_layers=num_layers,
                                    bidirectional=bidirectional)
    tol = TOLERANCE[np.dtype(dtype).name]
    L, g = gpubptt.bptt(params, x, d, s0, cell, backend="cuda", **kw, **options)
    rL, rg = gpubptt.bptt(params, x, d, s0, cell, backend="reference", **kw, **options)
    assert_close(L, rL, tol, "L")
    for k in rg:
        assert_close(g[k], rg[k], tol, f"d{k}")


def test_check_command_in_the_simulator(capsys):
    from gpubptt.cli import main

    assert main(["check", "--backend", "cuda", "--cell", "identity"]) == 0
    out = capsys.readouterr().out
    assert "OK: every output and gradient matches the reference" in out


def test_check_command_lstm_two_layers_bidirectional_in_the_simulator(capsys):
    from gpubptt.cli import main

    assert main(["check", "--backend", "cuda", "--cell", "lstm", "--layers", "2", "--bidirectional"]) == 0
    assert "OK: every output and gradient matches the reference" in capsys.readouterr().out


@pytest.mark.parametrize("cell,bidirectional,lengths", [
    ("gru", True, None),  # both directions in chunks, dL/dh passed between them
    ("tanh", False, [1, 4]),  # a sequence that ends before the later chunk
])
def test_cuda_kernels_in_time_chunks_match_reference(cell, bidirectional, lengths, monkeypatch):
    """The CUDA kernels run on views of a time chunk (the engine's memory-saving backward)."""
    from gpubptt import engine

    monkeypatch.setattr(engine, "CHUNK_BYTES", 1)
    monkeypatch.setattr(engine, "CHUNK_ROWS_PER_UNIT", 1)
    planned, real = [], engine.time_chunks
    monkeypatch.setattr(engine, "time_chunks", lambda *a: planned.append(real(*a)) or planned[-1])
    kw = dict(bidirectional=bidirectional, lengths=lengths, clip_step=0.05)
    params, x, s0, d = make_problem(4, 2, 2, 3, 2, dtype=np.float64, seed=5, cell=cell, bidirectional=bidirectional)
    L, g = gpubptt.bptt(params, x, d, s0, cell, backend="cuda", **kw)
    rL, rg = gpubptt.bptt(params, x, d, s0, cell, backend="reference", **kw)
    assert planned and all(c == [(0, 2), (2, 4)] for c in planned)
    assert_close(L, rL, TOLERANCE["float64"], "L")
    for k in rg:
        assert_close(g[k], rg[k], TOLERANCE["float64"], f"d{k}")
