"""Gradient clipping by global norm and by value on the reference and cpu backends, against NumPy
formulas written here; the NaN/Inf handling; bad input."""
import numpy as np
import pytest

import gpubptt
from gpubptt import clipping

from conftest import assert_close

# float64: the kernels sum squares in float64 like the formula, in another order (~1e-16 each);
# float32: the scaled gradient is rounded to float32 (~6e-8 relative), 1e-6 leaves margin.
TOL = {np.float64: 1e-12, np.float32: 1e-6}
BACKENDS = ("reference", "cpu")


def grads_of(dtype, scale=1.0, seed=0):
    rng = np.random.default_rng(seed)
    shapes = {"Wx": (4, 3), "Ws": (4, 4), "bx": (4,), "bs": (4,), "Wy": (2, 4), "by": (2,), "x": (5, 2, 3),
              "s0": (2, 4)}
    return {k: (scale * rng.standard_normal(s)).astype(dtype) for k, s in shapes.items()}


def numpy_norm(grads):
    """‖g‖ over the parameter gradients only (not x, s0)."""
    flat = np.concatenate([np.asarray(v, np.float64).ravel() for k, v in grads.items() if k not in ("x", "s0")])
    return float(np.sqrt(np.sum(flat * flat)))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_global_norm_matches_numpy(backend, dtype):
    g = grads_of(dtype)
    assert_close(clipping.global_norm(g, backend=backend), numpy_norm(g), TOL[dtype], "norm")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("max_norm", [0.5, 1e6])  # clips; does not clip
def test_clip_global_norm_matches_numpy(backend, dtype, max_norm):
    g = grads_of(dtype, scale=3.0)
    before = {k: v.copy() for k, v in g.items()}
    norm = numpy_norm(before)
    returned = clipping.clip_global_norm(g, max_norm, backend=backend)
    assert_close(returned, norm, TOL[dtype], "returned norm")  # the norm before clipping
    coef = max_norm / norm if norm > max_norm else 1.0  # Pascanu et al.: g <- c g / ‖g‖ when ‖g‖ > c
    for k in before:
        expected = before[k] if k in ("x", "s0") else np.asarray(before[k], np.float64) * coef
        assert_close(g[k], expected, TOL[dtype], f"clipped {k}")
        assert g[k].dtype == dtype
    assert_close(numpy_norm(g), min(norm, max_norm), TOL[dtype], "norm after clipping")


@pytest.mark.parametrize("backend", BACKENDS)
def test_norms_and_step_info_are_0d_float64_arrays(backend):
    """As documented (and as CuPy gives on the GPU): 0-d arrays, not NumPy scalars."""
    norms = [clipping.global_norm(grads_of(np.float32), backend=backend),
             clipping.clip_global_norm(grads_of(np.float32), 1.0, backend=backend)]
    params = {k: v for k, v in grads_of(np.float32, seed=1).items() if k not in ("x", "s0")}
    info = gpubptt.optim.SGD(params, lr=0.1, backend=backend).step(grads_of(np.float32))
    for a, dtype in zip(norms + list(info), [np.float64] * 3 + [np.bool_]):
        assert isinstance(a, np.ndarray) and a.shape == () and a.dtype == dtype, (type(a), a)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_clip_value_matches_numpy(backend, dtype):
    g = grads_of(dtype, scale=2.0)
    before = {k: v.copy() for k, v in g.items()}
    assert clipping.clip_value(g, 0.7, backend=backend) is None
    for k in before:
        expected = before[k] if k in ("x", "s0") else np.clip(before[k], -0.7, 0.7)
        np.testing.assert_array_equal(g[k], expected.astype(dtype), err_msg=k)  # a clamp is exact


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_gradients_are_left_alone_and_reported(backend, bad):
    g = grads_of(np.float32)
    g["Ws"][1, 2] = bad
    before = {k: v.copy() for k, v in g.items()}
    norm = clipping.clip_global_norm(g, 1.0, backend=backend)
    assert not np.isfinite(norm)
    for k in before:
        np.testing.assert_array_equal(g[k], before[k], err_msg=k)


def test_overflowing_squares_count_as_non_finite():
    # float64 gradients of 1e200: their squares overflow, so the norm is Inf (documented)
    g = {"W": np.full(3, 1e200)}
    assert np.isinf(clipping.global_norm(g, backend="cpu"))


def test_clip_global_norm_on_a_bptt_result_ignores_x_and_s0(problem):
    params, x, s0, d = problem(4, 2, 3, 5, 2, dtype=np.float64)
    L, grads = gpubptt.bptt(params, x, d, s0, backend="cpu")
    x_grad, s0_grad = grads["x"].copy(), grads["s0"].copy()
    norm = clipping.clip_global_norm(grads, 1e-3, backend="cpu")
    assert_close(norm, numpy_norm({k: v for k, v in gpubptt.bptt(params, x, d, s0, backend="cpu")[1].items()}),
                 1e-12, "norm")
    np.testing.assert_array_equal(grads["x"], x_grad)
    np.testing.assert_array_equal(grads["s0"], s0_grad)
    assert_close(numpy_norm(grads), 1e-3, 1e-12, "clipped norm")


@pytest.mark.parametrize("fn", [clipping.clip_global_norm, clipping.clip_value])
@pytest.mark.parametrize("value,error,match", [
    (0.0, ValueError, "positive finite number, got 0.0"),
    (-1, ValueError, "positive finite number, got -1"),
    (np.nan, ValueError, "positive finite number, got nan"),
    (np.inf, ValueError, "positive finite number, got inf"),
    ("1", TypeError, "expected a positive number, got '1'"),
    (None, TypeError, "expected a positive number, got None"),
])
def test_bad_thresholds(fn, value, error, match):
    with pytest.raises(error, match=match):
        fn(grads_of(np.float32), value, backend="cpu")


def test_bad_gradients():
    with pytest.raises(TypeError, match="grads: expected a dict of arrays, got list"):
        clipping.clip_value([np.zeros(3)], 1.0)
    with pytest.raises(ValueError, match="grads: expected at least one parameter array, got none"):
        clipping.clip_value({"x": np.zeros(3)}, 1.0)
    with pytest.raises(TypeError, match=r"grads\['W'\]: expected dtype float32 or float64, got int64"):
        clipping.clip_value({"W": np.zeros(3, np.int64)}, 1.0)
    with pytest.raises(TypeError, match=r"grads\['b'\]: dtype float64 differs from the other arrays' float32"):
        clipping.clip_value({"W": np.zeros(3, np.float32), "b": np.zeros(3)}, 1.0)
    with pytest.raises(ValueError, match=r"grads\['W'\]: expected a C-contiguous array"):
        clipping.clip_value({"W": np.zeros((3, 4)).T}, 1.0)
    with pytest.raises(ValueError, match="backend: expected one of"):
        clipping.clip_value({"W": np.zeros(3)}, 1.0, backend="gpu")


def read_only(a):
    """A read-only copy of ``a`` (as np.frombuffer over bytes gives)."""
    return np.frombuffer(a.tobytes(), a.dtype).reshape(a.shape)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fn", [clipping.clip_global_norm, clipping.clip_value])
def test_read_only_gradients_are_refused_before_a_kernel_sees_them(backend, fn):
    g = {"Wx": np.full((2, 3), 10.0), "b": read_only(np.full(3, 10.0))}
    with pytest.raises(ValueError, match=r"grads\['b'\]: expected a writable array \(it is updated in place\), "
                                         "got a read-only one"):
        fn(g, 1.0, backend=backend)
    np.testing.assert_array_equal(g["Wx"], np.full((2, 3), 10.0))


@pytest.mark.parametrize("backend", BACKENDS)
def test_global_norm_reads_any_layout(backend):
    """global_norm only reads: Fortran-ordered, strided and read-only gradients are fine, and left as they are."""
    g = grads_of(np.float64)
    g["Wx"] = np.asfortranarray(g["Wx"])
    g["Ws"] = g["Ws"][:, ::2]
    g["bx"] = read_only(g["bx"])
    before = {k: v.copy() for k, v in g.items()}
    assert_close(clipping.global_norm(g, backend=backend), numpy_norm(g), TOL[np.float64], "norm")
    for k in before:
        np.testing.assert_array_equal(g[k], before[k], err_msg=k)
    with pytest.raises(ValueError, match=r"grads\['Wx'\]: expected a C-contiguous array"):  # in place: refused
        clipping.clip_global_norm(g, 1.0, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fn", [clipping.clip_global_norm, clipping.clip_value])
def test_an_array_under_two_keys_is_refused(backend, fn):
    a = np.full(4, 10.0)
    buf = np.full(6, 10.0)
    for g, keys in (({"a": a, "b": a}, "'a'.*'b'"), ({"W": a.copy(), "c": buf[:4], "d": buf[3:]}, "'c'.*'d'")):
        with pytest.raises(ValueError, match=rf"grads\[{keys}\]: expected separate arrays .*share memory"):
            fn(g, 1.0, backend=backend)
    np.testing.assert_array_equal(a, np.full(4, 10.0))
    np.testing.assert_array_equal(buf, np.full(6, 10.0))
    fn({"c": buf[:3], "d": buf[3:]}, 1.0, backend=backend)  # views of one buffer that do not overlap are fine
    assert np.abs(buf).max() <= 1.0
