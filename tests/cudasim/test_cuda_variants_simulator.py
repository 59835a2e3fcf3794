"""Every CUDA kernel variant (simple, tiled, cooperative; ``kernels/cuda_blocks.py``), forced through
GPUBPTT_CUDA_VARIANT, against the reference in Numba's simulator (second tier: NUMBA_ENABLE_CUDASIM=1).

Per cell and variant two problems: one with every convention at once (variable lengths, the reverse
direction through a bidirectional layer, truncation, per-step clipping; five sequences, so the tiled
kernels run a tile of four and a partial tile) in float64, and one plain problem in float32 (tiles of
one sequence; H = 5, so the cooperative kernels split each dot product in two or four). The simulator runs a
cooperative grid of one block only (DESIGN.md §5); the multi-block grid is tested on a real GPU in
``tests/test_cuda_variants.py``. Sizes stay tiny: every GPU thread is a Python thread.
"""
import numpy as np
import pytest

import gpubptt
from gpubptt.kernels import cuda_blocks, elman_cuda, gru_cuda, lstm_cuda
from gpubptt.selfcheck import TOLERANCE

from conftest import assert_close, make_problem

pytestmark = pytest.mark.cudasim

PROBLEMS = {
    "every-convention": dict(shape=(4, 5, 2, 3, 2), dtype=np.float64, options=dict(
        bidirectional=True, lengths=[4, 2, 1, 3, 4], truncate=2, clip_step=0.05)),
    "plain": dict(shape=(3, 2, 2, 5, 2), dtype=np.float32, options=dict()),
}


@pytest.fixture
def launched(monkeypatch):
    """The plans the cell modules launch, in order."""
    plans = []
    for module in (elman_cuda, lstm_cuda, gru_cuda):
        def recording(*args, _run=module.run, **kwargs):
            plans.append(_run(*args, **kwargs))
            return plans[-1]
        monkeypatch.setattr(module, "run", recording)
    return plans


@pytest.mark.parametrize("problem", PROBLEMS)
@pytest.mark.parametrize("variant", ["simple", "tiled", "cooperative"])
@pytest.mark.parametrize("cell", ["tanh", "lstm", "gru"])
def test_variant_matches_reference(cell, variant, problem, monkeypatch, launched):
    monkeypatch.setenv(cuda_blocks.VARIANT_ENV, variant)
    spec = PROBLEMS[problem]
    options, dtype = spec["options"], spec["dtype"]
    params, x, s0, d = make_problem(*spec["shape"], dtype=dtype, seed=3, cell=cell,
                                    bidirectional=options.get("bidirectional", False))
    tol = TOLERANCE[np.dtype(dtype).name]
    L, g = gpubptt.bptt(params, x, d, s0, cell, backend="cuda", **options)
    rL, rg = gpubptt.bptt(params, x, d, s0, cell, backend="reference", **options)
    assert_close(L, rL, tol, "L")
    for k in rg:
        assert_close(g[k], rg[k], tol, f"d{k}")
    directions = 2 if options.get("bidirectional") else 1
    assert len(launched) == 2 * directions and {p.variant for p in launched} == {variant}, launched
    if variant == "tiled":
        assert {p.tile for p in launched} == ({4} if problem == "every-convention" else {1}), launched
    if variant == "cooperative":
        assert all(p.blocks == 1 for p in launched), launched
        if problem == "plain":
            assert all(p.splits > 1 for p in launched), launched


def test_auto_picks_the_tiled_variant_in_the_simulator(monkeypatch, launched):
    monkeypatch.delenv(cuda_blocks.VARIANT_ENV, raising=False)
    params, x, s0, d = make_problem(2, 2, 2, 4, 2, seed=1)
    Y, S = gpubptt.forward(params, x, s0, backend="cuda")
    rY, rS = gpubptt.forward(params, x, s0, backend="reference")
    assert_close(Y, rY, TOLERANCE["float64"], "Y")
    assert [p.variant for p in launched] == ["tiled"], launched
