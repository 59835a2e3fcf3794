"""Test tiers (README): the first tier runs with the CUDA simulator off (CPU, reference, compile
check); ``tests/cudasim`` is the second tier, run as ``NUMBA_ENABLE_CUDASIM=1 python -m pytest tests/cudasim``."""
import os

import numpy as np
import pytest

from gpubptt.selfcheck import relative_error

SIMULATOR = os.environ.get("NUMBA_ENABLE_CUDASIM", "0") == "1"
collect_ignore = [] if SIMULATOR else ["cudasim"]


def assert_close(actual, expected, tol, what, atol=0.0):
    """Fail, printing the largest error, unless max|actual - expected| <= tol * max|expected| + atol."""
    err = relative_error(actual, expected)
    if atol:
        diff = float(np.abs(np.asarray(actual, np.float64) - np.asarray(expected, np.float64)).max())
        scale = float(np.abs(np.asarray(expected, np.float64)).max())
        assert diff <= tol * scale + atol, (
            f"{what}: largest error {diff:.3e} > {tol:.1e} * {scale:.3e} + {atol:.1e} (relative {err:.3e})")
    else:
        assert err <= tol, f"{what}: largest relative error {err:.3e} > {tol:.1e}"


def make_problem(T, B, D, H, O, dtype=np.float64, loss="squared", seed=0, bias=True, cell="tanh", num_layers=1,
                 bidirectional=False):
    """Random params, x, s0 and targets d of one problem, every value O(1); s0 has the structure the
    cell and layers take ([B,H], [L·dirs,B,H], or a pair of them for LSTM)."""
    import gpubptt

    rng = np.random.default_rng(seed)
    params = gpubptt.init_params(D, H, O, bias=bias, dtype=dtype, seed=seed, cell=cell, num_layers=num_layers,
                                 bidirectional=bidirectional)
    x = rng.standard_normal((T, B, D)).astype(dtype)
    n = num_layers * (2 if bidirectional else 1)
    shape = (B, H) if n == 1 else (n, B, H)
    s0 = (0.5 * rng.standard_normal(shape)).astype(dtype)
    if cell == "lstm":
        s0 = (s0, (0.5 * rng.standard_normal(shape)).astype(dtype))
    if loss == "cross_entropy":
        d = rng.integers(0, O, (T, B))
    else:
        d = rng.standard_normal((T, B, O)).astype(dtype)
    return params, x, s0, d


@pytest.fixture
def problem():
    return make_problem
