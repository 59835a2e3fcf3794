"""Clipping and optimizer kernels of the ``cuda`` backend in Numba's CUDA simulator, against the
reference formulas (second tier: NUMBA_ENABLE_CUDASIM=1). Tiny arrays: every launch is Python threads."""
import numpy as np
import pytest

from gpubptt import clipping, optim

from conftest import assert_close

pytestmark = pytest.mark.cudasim

# float64: same operations as the reference in another association (~1e-16 per step);
# float32: ~6e-8 per operation over two steps, 1e-5 relative leaves margin.
TOL = {np.float64: 1e-12, np.float32: 1e-5}


def problem(dtype, steps=2, n=40):
    rng = np.random.default_rng(3)
    # 40 elements: a 64-thread block, so the shared-memory reduction runs more than one level
    params = {"W": rng.standard_normal((n // 4, 4)).astype(dtype), "b": rng.standard_normal(3).astype(dtype)}
    grads = [{k: rng.standard_normal(v.shape).astype(dtype) for k, v in params.items()} for _ in range(steps)]
    return params, grads


@pytest.mark.parametrize("name,options,dtype", [  # one dtype each: the simulator is slow
    ("sgd", dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01), np.float64),
    ("adam", dict(lr=0.01, weight_decay=0.1), np.float32),
    ("adagrad", dict(lr=0.1, lr_decay=0.05), np.float64),
])
def test_cuda_optimizers_match_reference(name, options, dtype):
    params, grads = problem(dtype)
    out = {}
    for backend in ("reference", "cuda"):
        p = {k: v.copy() for k, v in params.items()}
        opt = optim.make_optimizer(name, p, backend=backend, **options)
        for g in grads:
            info = opt.step(g, clip_norm=2.0, clip_value=1.5)
        out[backend] = (p, opt, float(info.norm))
    assert out["cuda"][1].backend == "cuda"
    assert_close(out["cuda"][2], out["reference"][2], TOL[dtype], "norm")
    for k in params:
        assert_close(out["cuda"][0][k], out["reference"][0][k], TOL[dtype], f"{name} {k}")
    assert out["cuda"][1].steps == 2


def test_cuda_nan_guard_skips_on_the_device():
    params, grads = problem(np.float32, steps=1)
    p = {k: v.copy() for k, v in params.items()}
    opt = optim.Adam(p, backend="cuda")
    g = {k: v.copy() for k, v in grads[0].items()}
    g["W"][0, 0] = np.nan
    info = opt.step(g)
    assert not bool(info.applied) and (opt.steps, opt.skipped) == (0, 1)
    for k in params:
        np.testing.assert_array_equal(p[k], params[k])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cuda_clipping_matches_numpy(dtype):
    _, grads = problem(dtype, steps=1)
    g = {k: 3 * v for k, v in grads[0].items()}
    before = {k: v.copy() for k, v in g.items()}
    norm = np.sqrt(sum(np.sum(np.asarray(v, np.float64) ** 2) for v in before.values()))
    returned = clipping.clip_global_norm(g, 1.0, backend="cuda")
    assert_close(returned, norm, TOL[dtype], "norm")
    for k in g:
        assert_close(g[k], before[k] / norm, TOL[dtype], k)
    scaled = {k: v.copy() for k, v in g.items()}
    clipping.clip_value(g, 0.1, backend="cuda")
    for k in g:
        np.testing.assert_array_equal(g[k], np.clip(scaled[k], dtype(-0.1), dtype(0.1)), err_msg=k)  # exact
