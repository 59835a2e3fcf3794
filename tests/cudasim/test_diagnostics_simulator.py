"""gpubptt.diagnostics on the ``cuda`` backend in Numba's CUDA simulator (second tier): the per-step
summands and norms the backward kernel gives against the reference's Jacobian products."""
import numpy as np
import pytest

import gpubptt
from gpubptt.diagnostics import contributions
from gpubptt.selfcheck import TOLERANCE

from conftest import assert_close, make_problem

pytestmark = pytest.mark.cudasim


@pytest.mark.parametrize("cell,dtype", [("tanh", np.float64), ("tanh", np.float32), ("lstm", np.float64),
                                        ("gru", np.float64)])
def test_cuda_summands_match_the_reference_and_add_up_to_bptt(cell, dtype):
    T, N = 4, 3
    params, x, s0, d = make_problem(T, 2, 2, 3, 2, dtype=dtype, seed=8, cell=cell)
    tol = TOLERANCE[np.dtype(dtype).name]
    r = contributions(params, x, d, step=N, s0=s0, cell=cell, backend="cuda")
    ref = contributions(params, x, d, step=N, s0=s0, cell=cell, backend="reference")
    assert r.backend == "cuda" and isinstance(r.dWs, np.ndarray) and r.dWs.dtype == dtype
    g = gpubptt.bptt(params, x[:N], d[:N], s0, cell, loss_steps="last", backend="reference")[1]
    for k in ("Wx", "Ws", "bx", "bs"):
        a, b = getattr(r, "d" + k), getattr(ref, "d" + k)
        for i in range(N):
            assert_close(a[i], b[i], tol, f"step {i + 1}'s summand of dE_N/d{k}", atol=tol * np.abs(b).max())
        assert_close(a.sum(axis=0), g[k], tol, f"Σ_i summands of dE_N/d{k}")
    assert_close(r.dS_norm, ref.dS_norm, tol, "‖dE_N/dS_i‖")
    if cell == "lstm":
        assert_close(r.dc_norm, ref.dc_norm, tol, "‖dE_N/dc_i‖")
