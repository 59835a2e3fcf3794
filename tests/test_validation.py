"""Bad input to the public calls (DESIGN.md §6 rule 9), and the input/output contract of good calls.

First tier: no GPU, simulator off, tiny sizes, backends "cpu" and "reference" only.

Every bad input must raise the documented error type (ValueError for a wrong value or shape,
TypeError for a wrong type or dtype) with a message that names the argument and what was expected
or received, and must leave the caller's arrays exactly as they were.
"""
import re
from fractions import Fraction

import numpy as np
import pytest

import gpubptt
from gpubptt.backend import ENV_VAR
from gpubptt.params import param_shapes

T, B, D, H, O = 4, 2, 3, 5, 2
HOST_BACKENDS = ("cpu", "reference")
PARAM_KEYS = ("Wx", "Ws", "bx", "bs", "Wy", "by")
BAD_FLOAT_DTYPES = (np.int64, np.int32, np.complex128, np.float16, np.bool_)


@pytest.fixture(autouse=True)
def _no_backend_env(monkeypatch):
    """A GPUBPTT_BACKEND set in the shell must not change what these tests check."""
    monkeypatch.delenv(ENV_VAR, raising=False)


def make(dtype=np.float64, bias=True, seed=0):
    """(params, x [T,B,D], d [T,B,O], s0 [B,H]), all of ``dtype``."""
    rng = np.random.default_rng(seed + 100)
    params = gpubptt.init_params(D, H, O, bias=bias, dtype=dtype, seed=seed)
    x = rng.standard_normal((T, B, D)).astype(dtype)
    d = rng.standard_normal((T, B, O)).astype(dtype)
    s0 = rng.standard_normal((B, H)).astype(dtype)
    return params, x, d, s0


def classes(seed=0):
    """Integer class targets d [T,B] in [0, O)."""
    return np.random.default_rng(seed + 200).integers(0, O, size=(T, B))


def run(which, params, x, d=None, s0=None, **kw):
    """Call forward (which="forward") or bptt (which="bptt") on the cpu backend unless told."""
    kw.setdefault("backend", "cpu")
    if which == "forward":
        return gpubptt.forward(params, x, s0, **kw)
    return gpubptt.bptt(params, x, d, s0, **kw)


# ------------------------------------------------------------------------------------------------
# helpers: snapshot every array reachable from the arguments, compare after the call


def _leaves(obj, path="arg"):
    if isinstance(obj, np.ndarray):
        yield path, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _leaves(v, f"{path}[{k!r}]")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _leaves(v, f"{path}[{i}]")


def snapshot(*objs):
    return [(path, a, a.copy()) for i, o in enumerate(objs) for path, a in _leaves(o, f"arg{i}")]


def assert_unchanged(snap):
    for path, a, before in snap:
        assert a.dtype == before.dtype and a.shape == before.shape, f"{path}: dtype/shape changed"
        assert np.array_equal(a, before, equal_nan=True), f"{path}: the caller's array was modified"


def expect_error(exc, fragments, fn, *args, **kwargs):
    """Call fn, assert it raises ``exc`` (or a subclass: NonFiniteError is a ValueError) with every fragment
    in its message, inputs unchanged."""
    snap = snapshot(args, kwargs)
    with pytest.raises((ValueError, TypeError)) as info:
        fn(*args, **kwargs)
    msg = str(info.value)
    assert isinstance(info.value, exc), f"expected {exc.__name__}, got {type(info.value).__name__}: {msg}"
    for f in fragments:
        assert f in msg, f"{f!r} not in the error message {msg!r}"
    assert_unchanged(snap)
    return msg


def shape_str(shape):
    return str(tuple(shape))


# ------------------------------------------------------------------------------------------------
# x


@pytest.mark.parametrize("which", ["forward", "bptt"])
@pytest.mark.parametrize(
    "bad",
    [
        lambda x: x[0],  # [B,D]: rank 2
        lambda x: x[None],  # [1,T,B,D]: rank 4
        lambda x: x[..., :2],  # D wrong
        lambda x: np.concatenate([x, x], axis=2),  # D wrong, larger
        lambda x: x[0, 0],  # rank 1
        lambda x: np.asarray(x[0, 0, 0]),  # rank 0
    ],
    ids=["rank2", "rank4", "D-small", "D-large", "rank1", "rank0"],
)
def test_x_wrong_shape(which, bad):
    params, x, d, s0 = make()
    xb = bad(x)
    expect_error(ValueError, ["x:", "[T,B,D]", "(*, *, 3)", f"got {shape_str(xb.shape)}"],
                 run, which, params, xb, d, None)


def test_a_torch_tensor_gets_the_conversion_named():
    torch = pytest.importorskip("torch", reason="torch not installed: the tensor case needs it")
    params, x, d, s0 = make()
    expect_error(TypeError, ["x: expected a NumPy or CuPy array, got Tensor (a torch tensor: pass "
                             "t.detach().cpu().numpy()"], run, "forward", params, torch.from_numpy(x.copy()))


@pytest.mark.parametrize("which", ["forward", "bptt"])
@pytest.mark.parametrize("empty", ["T", "B"])
def test_x_empty_time_or_batch(which, empty):
    params, x, d, s0 = make()
    xb = x[:0] if empty == "T" else x[:, :0]
    db = d[:0] if empty == "T" else d[:, :0]
    msg = expect_error(ValueError, ["x:", f"{empty}=0", f"got shape {shape_str(xb.shape)}"],
                       run, which, params, xb, db, None)
    assert "time step" in msg


@pytest.mark.parametrize("which", ["forward", "bptt"])
@pytest.mark.parametrize("dtype", BAD_FLOAT_DTYPES, ids=lambda t: np.dtype(t).name)
def test_x_bad_dtype(which, dtype):
    params, x, d, s0 = make()
    xb = x.astype(dtype)
    expect_error(TypeError, ["x:", "float32 or float64", f"got {np.dtype(dtype)}"], run, which, params, xb, d, s0)


@pytest.mark.parametrize("which", ["forward", "bptt"])
def test_x_of_the_other_byte_order_or_masked(which):
    """A float64 of the other byte order is named as such (not a bare '>f8' against 'float64'); a
    masked array is refused: its mask would be ignored."""
    params, x, d, s0 = make()
    swapped = x.astype(x.dtype.newbyteorder("S"))
    expect_error(TypeError, ["x:", "float32 or float64", f"got {swapped.dtype.str}", "opposite byte order",
                             ".astype('float64')"], run, which, params, swapped, d, s0)
    expect_error(TypeError, ["x:", "masked array", "mask would be ignored", "a.filled(value)"], run, which, params,
                 np.ma.masked_array(x, mask=np.zeros(x.shape, bool)), d, s0)


@pytest.mark.parametrize("which", ["forward", "bptt"])
@pytest.mark.parametrize("pdtype,xdtype", [(np.float64, np.float32), (np.float32, np.float64)])
def test_x_dtype_differs_from_params(which, pdtype, xdtype):
    params, x, d, s0 = make(dtype=pdtype)
    xb = x.astype(xdtype)
    expect_error(TypeError, ["x:", f"dtype {np.dtype(xdtype)}", f"other arrays' {np.dtype(pdtype)}"],
                 run, which, params, xb, d, s0)


@pytest.mark.parametrize("which", ["forward", "bptt"])
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_x_not_finite(which, value):
    params, x, d, s0 = make()
    x[2, 1, 0] = value
    expect_error(ValueError, ["x:", "NaN or Inf"], run, which, params, x, d, s0)


@pytest.mark.parametrize("which", ["forward", "bptt"])
@pytest.mark.parametrize("wrap", [lambda x: x.tolist(), lambda x: tuple(x.tolist()), lambda x: None],
                         ids=["list", "tuple", "None"])
def test_x_not_an_array(which, wrap):
    params, x, d, s0 = make()
    xb = wrap(x)
    expect_error(TypeError, ["x:", "NumPy or CuPy array", f"got {type(xb).__name__}"], run, which, params, xb, d, s0)


# ------------------------------------------------------------------------------------------------
# s0


@pytest.mark.parametrize("which", ["forward", "bptt"])
@pytest.mark.parametrize("shape", [(B, H + 1), (B + 1, H), (H,), (1, B, H), (H, B)])
def test_s0_wrong_shape(which, shape):
    params, x, d, _ = make()
    s0 = np.zeros(shape)
    expect_error(ValueError, ["s0:", "[B,H]", f"({B}, {H})", f"got {shape_str(shape)}"], run, which, params, x, d, s0)


@pytest.mark.parametrize("which", ["forward", "bptt"])
@pytest.mark.parametrize("dtype", BAD_FLOAT_DTYPES, ids=lambda t: np.dtype(t).name)
def test_s0_bad_dtype(which, dtype):
    params, x, d, s0 = make()
    expect_error(TypeError, ["s0:", "float32 or float64", f"got {np.dtype(dtype)}"],
                 run, which, params, x, d, s0.astype(dtype))


@pytest.mark.parametrize("which", ["forward", "bptt"])
@pytest.mark.parametrize("xdtype,sdtype", [(np.float64, np.float32), (np.float32, np.float64)])
def test_s0_dtype_differs_from_x(which, xdtype, sdtype):
    params, x, d, s0 = make(dtype=xdtype)
    expect_error(TypeError, ["s0:", f"dtype {np.dtype(sdtype)}", f"other arrays' {np.dtype(xdtype)}"],
                 run, which, params, x, d, s0.astype(sdtype))


@pytest.mark.parametrize("which", ["forward", "bptt"])
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_s0_not_finite(which, value):
    params, x, d, s0 = make()
    s0[1, 3] = value
    expect_error(ValueError, ["s0:", "NaN or Inf"], run, which, params, x, d, s0)


@pytest.mark.parametrize("which", ["forward", "bptt"])
def test_s0_list(which):
    # a list is read as a structure of states: for cell="tanh" it is refused as "not one array"
    params, x, d, s0 = make()
    expect_error(TypeError, ["s0:", "takes one array", "got a list"], run, which, params, x, d, s0.tolist())


# ------------------------------------------------------------------------------------------------
# d, squared loss


@pytest.mark.parametrize("shape", [(T, B), (T + 1, B, O), (T, B + 1, O), (T, B, O + 1), (T, B, O, 1), (B, O)])
def test_d_wrong_shape(shape):
    params, x, _, s0 = make()
    d = np.zeros(shape)
    expect_error(ValueError, ["d:", "[T,B,O]", f"({T}, {B}, {O})", f"got {shape_str(shape)}"],
                 run, "bptt", params, x, d, s0)


@pytest.mark.parametrize("dtype", BAD_FLOAT_DTYPES, ids=lambda t: np.dtype(t).name)
def test_d_bad_dtype(dtype):
    params, x, d, s0 = make()
    expect_error(TypeError, ["d:", "float32 or float64", f"got {np.dtype(dtype)}"],
                 run, "bptt", params, x, d.astype(dtype), s0)


@pytest.mark.parametrize("xdtype,ddtype", [(np.float64, np.float32), (np.float32, np.float64)])
def test_d_dtype_differs_from_x(xdtype, ddtype):
    params, x, d, s0 = make(dtype=xdtype)
    expect_error(TypeError, ["d:", f"dtype {np.dtype(ddtype)}", f"other arrays' {np.dtype(xdtype)}"],
                 run, "bptt", params, x, d.astype(ddtype), s0)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_d_not_finite(value):
    params, x, d, s0 = make()
    d[T - 1, 0, 1] = value
    expect_error(ValueError, ["d:", "NaN or Inf"], run, "bptt", params, x, d, s0)


@pytest.mark.parametrize("wrap", [lambda d: d.tolist(), lambda d: None], ids=["list", "None"])
def test_d_not_an_array(wrap):
    params, x, d, s0 = make()
    db = wrap(d)
    expect_error(TypeError, ["d:", f"got {type(db).__name__}"], run, "bptt", params, x, db, s0)


# ------------------------------------------------------------------------------------------------
# d, cross-entropy class targets

CE = dict(loss="cross_entropy", output_activation="softmax")


@pytest.mark.parametrize("value,lo,hi", [(-1, -1, O - 1), (O, 0, O), (O + 7, 0, O + 7)])
def test_ce_targets_out_of_range(value, lo, hi):
    params, x, _, s0 = make()
    d = classes()
    d[0, 0], d[1, 0] = 0, O - 1  # the other extremes present, so the reported range is exact
    d[2, 1] = value
    expect_error(ValueError, ["d:", f"[0, {O - 1}]", f"got values in [{lo}, {hi}]"], run, "bptt", params, x, d, s0, **CE)


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.bool_, np.complex128])
def test_ce_targets_not_integer(dtype):
    params, x, _, s0 = make()
    d = classes().astype(dtype)
    expect_error(TypeError, ["d:", "integer dtype", f"got {np.dtype(dtype)}"], run, "bptt", params, x, d, s0, **CE)


def test_ce_targets_one_hot_shape():
    params, x, _, s0 = make()
    d = np.eye(O, dtype=np.int64)[classes()]  # [T,B,O] one-hot: not accepted, classes are [T,B]
    expect_error(ValueError, ["d:", "[T,B]", f"({T}, {B})", f"got {shape_str(d.shape)}"],
                 run, "bptt", params, x, d, s0, **CE)


@pytest.mark.parametrize("shape", [(T,), (T + 1, B), (T, B + 1), (B, T)])
def test_ce_targets_wrong_shape(shape):
    params, x, _, s0 = make()
    d = np.zeros(shape, dtype=np.int64)
    expect_error(ValueError, ["d:", "[T,B]", f"got {shape_str(shape)}"], run, "bptt", params, x, d, s0, **CE)


def test_ce_targets_list():
    params, x, _, s0 = make()
    expect_error(TypeError, ["d:", "got list"], run, "bptt", params, x, classes().tolist(), s0, **CE)


@pytest.mark.parametrize("act", ["identity", "tanh", "sigmoid"])
def test_ce_needs_softmax(act):
    params, x, _, s0 = make()
    expect_error(ValueError, ["loss='cross_entropy'", "output_activation='softmax'", f"got output_activation={act!r}"],
                 run, "bptt", params, x, classes(), s0, loss="cross_entropy", output_activation=act)


@pytest.mark.parametrize("backend", HOST_BACKENDS)
@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.int8, np.uint8, np.uint64])
def test_ce_targets_any_integer_dtype_work(backend, dtype):
    params, x, _, s0 = make()
    d = classes().astype(dtype)
    L, grads = run("bptt", params, x, d, s0, backend=backend, **CE)
    ref, _ = run("bptt", params, x, classes(), s0, backend=backend, **CE)
    assert np.isfinite(L) and L == ref


# ------------------------------------------------------------------------------------------------
# params


@pytest.mark.parametrize("which", ["forward", "bptt"])
@pytest.mark.parametrize("params", [None, [], (), "Wx", 3], ids=["None", "list", "tuple", "str", "int"])
def test_params_not_a_dict(which, params):
    _, x, d, s0 = make()
    expect_error(TypeError, ["params:", "dict", f"got {type(params).__name__}"], run, which, params, x, d, s0)


@pytest.mark.parametrize("which", ["forward", "bptt"])
def test_params_list_of_arrays(which):
    params, x, d, s0 = make()
    plist = list(params.values())
    expect_error(TypeError, ["params:", "dict", "got list"], run, which, plist, x, d, s0)


@pytest.mark.parametrize("which", ["forward", "bptt"])
@pytest.mark.parametrize("key", ["Wx", "Ws", "Wy", "by"])
def test_params_missing_key(which, key):
    params, x, d, s0 = make()
    del params[key]
    expect_error(ValueError, ["params:", f"missing key(s) {key!r}"], run, which, params, x, d, s0)


@pytest.mark.parametrize("which", ["forward", "bptt"])
@pytest.mark.parametrize("present,absent", [("bx", "bs"), ("bs", "bx")])
def test_params_only_one_bias(which, present, absent):
    params, x, d, s0 = make()
    del params[absent]
    expect_error(ValueError, ["params:", f"missing key(s) {absent!r}", "b* keys all present, or all absent"],
                 run, which, params, x, d, s0)


@pytest.mark.parametrize("which", ["forward", "bptt"])
@pytest.mark.parametrize("extra", [["Wh"], ["wx"], ["b"], [1, "foo"], [("Wx",)]], ids=str)
def test_params_unknown_key(which, extra):
    params, x, d, s0 = make()
    for k in extra:
        params[k] = params["Wx"].copy()
    msg = expect_error(ValueError, ["params:", "unknown key(s)"], run, which, params, x, d, s0)
    for k in extra:
        assert repr(k) in msg


def test_params_missing_and_unknown_key_both_named():
    params, x, d, s0 = make()
    params["W_x"] = params.pop("Wx")
    expect_error(ValueError, ["missing key(s) 'Wx'", "unknown key(s) 'W_x'"], run, "forward", params, x)


@pytest.mark.parametrize("made,told", [((2, False, True), (1, False)), ((1, True, False), (2, False)),
                                       ((3, True, True), (1, True)), ((1, False, True), (2, True))], ids=str)
def test_params_of_another_structure_say_which(made, told):
    """Keys of another num_layers/bidirectional: the error lists the expected keys (biases included
    when the given keys have any) and says which structure the given keys are."""
    num_layers, bidirectional, bias = made
    params = gpubptt.init_params(D, H, O, dtype=np.float64, num_layers=num_layers, bidirectional=bidirectional,
                                 bias=bias, seed=0)
    x = make()[1]
    expected = ", ".join(param_shapes(1, 1, 1, "tanh", *told, bias))
    expect_error(ValueError, [f"the keys are {expected} (", f"these keys are those of num_layers={num_layers}, "
                              f"bidirectional={bidirectional}"],
                 run, "forward", params, x, num_layers=told[0], bidirectional=told[1])


# a wrong shape for each parameter (the others right); for Wx, Ws and Wy the rank check comes first.
# H is read from Ws's width, so a Ws of the wrong width is reported against Wx (a test of its own below)
WRONG_PARAM_SHAPES = {
    "Ws": [((H + 1, H), "[H,H]", f"({H}, {H})"), ((H,), "[H,H]", "2 dimensions"), ((1, H, H), "[H,H]", "2 dimensions")],
    "bx": [((H + 1,), "[H]", f"({H},)"), ((H, 1), "[H]", f"({H},)"), ((), "[H]", f"({H},)")],
    "bs": [((H - 1,), "[H]", f"({H},)"), ((1, H), "[H]", f"({H},)")],
    "Wy": [((O, H + 1), "[O,H]", f"({O}, {H})"), ((O,), "[O,H]", "2 dimensions"), ((1, O, H), "[O,H]", "2 dimensions")],
    "by": [((O + 1,), "[O]", f"({O},)"), ((O, 1), "[O]", f"({O},)")],
    "Wx": [((H,), "[H,D]", "2 dimensions"), ((1, H, D), "[H,D]", "2 dimensions")],
}


@pytest.mark.parametrize("which", ["forward", "bptt"])
@pytest.mark.parametrize(
    "key,shape,names,expected",
    [(k, *case) for k, cases in WRONG_PARAM_SHAPES.items() for case in cases],
    ids=lambda v: str(v).replace(" ", ""),
)
def test_param_wrong_shape(which, key, shape, names, expected):
    params, x, d, s0 = make()
    params[key] = np.zeros(shape)
    expect_error(ValueError, [f"params[{key!r}]:", names, expected, f"got {shape_str(shape)}"],
                 run, which, params, x, d, s0)


@pytest.mark.parametrize("which", ["forward", "bptt"])
def test_param_Wx_wrong_D_is_reported_against_x(which):
    # D is read from Wx, so a Wx of the wrong width shows up as x not matching it
    params, x, d, s0 = make()
    params["Wx"] = np.zeros((H, D + 1))
    expect_error(ValueError, ["x:", "[T,B,D]", f"(*, *, {D + 1})", f"got {shape_str(x.shape)}"],
                 run, which, params, x, d, s0)


@pytest.mark.parametrize("which", ["forward", "bptt"])
def test_param_Wx_wrong_H(which):
    params, x, d, s0 = make()
    params["Wx"] = np.zeros((H + 1, D))
    expect_error(ValueError, ["params['Wx']:", "[H,D]", f"({H}, {D})", f"got ({H + 1}, {D})"],
                 run, which, params, x, d, s0)


@pytest.mark.parametrize("which", ["forward", "bptt"])
def test_param_Ws_wrong_width_is_reported_against_Ws(which):
    # H is read from Ws's width (Ws [G·H,H]); Ws's own height must agree with it
    params, x, d, s0 = make()
    params["Ws"] = np.zeros((H, H + 1))
    expect_error(ValueError, ["params['Ws']:", "[H,H]", f"({H + 1}, {H + 1})", f"got ({H}, {H + 1})"],
                 run, which, params, x, d, s0)


@pytest.mark.parametrize("which", ["forward", "bptt"])
@pytest.mark.parametrize("size", ["D", "H", "O"])
def test_param_zero_sizes(which, size):
    # consistent shapes with one size 0 (init_params refuses those sizes, so must the calls)
    sizes = {"D": D, "H": H, "O": O, size: 0}
    d_, h, o = sizes["D"], sizes["H"], sizes["O"]
    params = {"Wx": np.zeros((h, d_)), "Ws": np.zeros((h, h)), "bx": np.zeros(h), "bs": np.zeros(h),
              "Wy": np.zeros((o, h)), "by": np.zeros(o)}
    x, d, s0 = np.zeros((T, B, d_)), np.zeros((T, B, o)), np.zeros((B, h))
    expect_error(ValueError, ["params:", "at least 1", f"{size}=0"], run, which, params, x, d, s0)


@pytest.mark.parametrize("which", ["forward", "bptt"])
@pytest.mark.parametrize("key", PARAM_KEYS)
@pytest.mark.parametrize("dtype", BAD_FLOAT_DTYPES, ids=lambda t: np.dtype(t).name)
def test_param_bad_dtype(which, key, dtype):
    params, x, d, s0 = make()
    params[key] = params[key].astype(dtype)
    expect_error(TypeError, [f"params[{key!r}]:", "float32 or float64", f"got {np.dtype(dtype)}"],
                 run, which, params, x, d, s0)


@pytest.mark.parametrize("which", ["forward", "bptt"])
@pytest.mark.parametrize("key", [k for k in PARAM_KEYS if k != "Wx"])  # Wx sets the dtype the others must have
@pytest.mark.parametrize("base,other", [(np.float64, np.float32), (np.float32, np.float64)])
def test_params_mixed_dtypes(which, key, base, other):
    params, x, d, s0 = make(dtype=base)
    params[key] = params[key].astype(other)
    expect_error(TypeError, [f"params[{key!r}]:", f"dtype {np.dtype(other)}", f"other arrays' {np.dtype(base)}"],
                 run, which, params, x, d, s0)


@pytest.mark.parametrize("which", ["forward", "bptt"])
@pytest.mark.parametrize("key", PARAM_KEYS)
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_param_not_finite(which, key, value):
    params, x, d, s0 = make()
    params[key].flat[-1] = value
    expect_error(ValueError, [f"params[{key!r}]:", "NaN or Inf"], run, which, params, x, d, s0)


@pytest.mark.parametrize("which", ["forward", "bptt"])
@pytest.mark.parametrize("key", PARAM_KEYS)
def test_param_list(which, key):
    params, x, d, s0 = make()
    params[key] = params[key].tolist()
    expect_error(TypeError, [f"params[{key!r}]:", "NumPy or CuPy array", "got list"], run, which, params, x, d, s0)


# ------------------------------------------------------------------------------------------------
# string choices and the backend


@pytest.mark.parametrize("which", ["forward", "bptt"])
@pytest.mark.parametrize(
    "arg,value,choices",
    [
        ("cell", "LSTM", "'tanh', 'relu', 'sigmoid', 'identity', 'lstm', 'gru'"),
        ("cell", "Tanh", "'tanh'"),
        ("cell", "elman", "'lstm', 'gru'"),
        ("cell", None, "'tanh'"),
        ("output_activation", "relu", "'identity', 'tanh', 'sigmoid', 'softmax'"),
        ("output_activation", "log_softmax", "'softmax'"),
        ("backend", "gpu", "'auto', 'reference', 'cpu', 'cuda'"),
        ("backend", "CPU", "'cpu'"),
        ("backend", None, "'auto'"),
    ],
)
def test_unknown_choice(which, arg, value, choices):
    params, x, d, s0 = make()
    expect_error(ValueError, [f"{arg}:", "expected one of", choices, f"got {value!r}"],
                 run, which, params, x, d, s0, **{arg: value})


@pytest.mark.parametrize(
    "arg,value,choices",
    [
        ("loss", "mse", "'squared', 'cross_entropy'"),
        ("loss", "crossentropy", "'cross_entropy'"),
        ("loss", None, "'squared'"),
        ("loss_steps", "first", "'all', 'last', a positive integer"),
    ],
)
def test_unknown_loss_choice(arg, value, choices):
    params, x, d, s0 = make()
    expect_error(ValueError, [f"{arg}:", "expected", choices, f"got {value!r}"],
                 run, "bptt", params, x, d, s0, **{arg: value})


@pytest.mark.parametrize("which", ["forward", "bptt"])
@pytest.mark.parametrize("value", ["gpu", "numpy", "c pu"])
def test_unknown_backend_from_environment(monkeypatch, which, value):
    monkeypatch.setenv(ENV_VAR, value)
    params, x, d, s0 = make()
    expect_error(ValueError, [f"{ENV_VAR}:", "'auto', 'reference', 'cpu', 'cuda'", f"got {value!r}"],
                 run, which, params, x, d, s0, backend="auto")


def test_unknown_backend_from_environment_rnn(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "gpu")
    rnn = gpubptt.RNN(D, H, O, dtype=np.float64, seed=0)
    _, x, d, _ = make()
    expect_error(ValueError, [f"{ENV_VAR}:", "got 'gpu'"], rnn.forward, x)
    expect_error(ValueError, [f"{ENV_VAR}:", "got 'gpu'"], rnn.bptt, x, d)


# ------------------------------------------------------------------------------------------------
# RNN(...) and init_params(...)

SIZE_ARGS = ("input_size", "hidden_size", "output_size")


@pytest.mark.parametrize("factory", ["RNN", "init_params"])
@pytest.mark.parametrize("arg", SIZE_ARGS)
@pytest.mark.parametrize("value", [0, -1, 2.0, 2.5, "3", None, True, np.float64(3.0)], ids=repr)
def test_bad_sizes(factory, arg, value):
    sizes = dict(zip(SIZE_ARGS, (D, H, O)))
    sizes[arg] = value
    fn = gpubptt.RNN if factory == "RNN" else gpubptt.init_params
    expect_error(ValueError, [f"{arg}:", "positive integer", f"got {value!r}"], fn, **sizes)


@pytest.mark.parametrize("factory", ["RNN", "init_params"])
@pytest.mark.parametrize("dtype", [np.float16, np.int32, np.int64, np.complex64, "float16", bool, "nonsense", object],
                         ids=str)
def test_bad_init_dtype(factory, dtype):
    fn = gpubptt.RNN if factory == "RNN" else gpubptt.init_params
    expect_error(TypeError, ["dtype:", "float32 or float64"], fn, D, H, O, dtype=dtype)


@pytest.mark.parametrize(
    "arg,value",
    [("cell", "LSTM"), ("cell", "rnn"), ("output_activation", "relu"), ("backend", "gpu"), ("backend", "numpy")],
)
def test_rnn_unknown_choice(arg, value):
    expect_error(ValueError, [f"{arg}:", "expected one of", f"got {value!r}"], gpubptt.RNN, D, H, O, **{arg: value})


@pytest.mark.parametrize("dtype", [np.float32, np.float64, "float32", "float64"])
def test_init_sizes_and_dtypes_accepted(dtype):
    p = gpubptt.init_params(np.int64(D), np.int32(H), O, dtype=dtype, seed=1)
    assert set(p) == set(PARAM_KEYS)
    assert all(v.dtype == np.dtype(dtype) for v in p.values())
    assert p["Wx"].shape == (H, D) and p["Wy"].shape == (O, H)


def test_init_params_seeded():
    a = gpubptt.init_params(D, H, O, seed=7)
    b = gpubptt.init_params(D, H, O, seed=7)
    assert all(np.array_equal(a[k], b[k]) for k in PARAM_KEYS)
    assert not np.array_equal(a["Ws"], gpubptt.init_params(D, H, O, seed=8)["Ws"])
    assert set(gpubptt.init_params(D, H, O, seed=None)) == set(PARAM_KEYS)  # fresh entropy


@pytest.mark.parametrize("make", [gpubptt.init_params, gpubptt.RNN], ids=["init_params", "RNN"])
def test_init_params_refuses_a_bias_or_dtype_it_would_misread(make):
    """bias='no' would keep the biases and bias=None drop them; dtype=None would mean float64."""
    for bias in ("no", None, 0):
        expect_error(TypeError, ["bias:", "True or False", f"got {bias!r}"], make, D, H, O, bias=bias)
    for dtype, shown in ((None, "None"), ("bogus", "'bogus'"), (np.float16, "float16"), (np.dtype("float16"),
                                                                                       "dtype('float16')")):
        expect_error(TypeError, ["dtype:", "float32 or float64", f"got {shown}"], make, D, H, O, dtype=dtype)
    made = make(D, H, O, bias=np.False_, seed=0)
    assert not gpubptt.params.has_bias(made if isinstance(made, dict) else made.params)


@pytest.mark.parametrize("seed", [-1, 1.5, "0", True])
def test_init_params_refuses_a_bad_seed(seed):
    expect_error(ValueError, ["seed:", "integer >= 0 or None", f"got {seed!r}"], gpubptt.init_params, D, H, O,
                 seed=seed)
    expect_error(ValueError, ["seed:", f"got {seed!r}"], gpubptt.RNN, D, H, O, seed=seed)


def test_rnn_methods_validate():
    rnn = gpubptt.RNN(D, H, O, dtype=np.float64, seed=0, backend="cpu")
    _, x, d, s0 = make()
    snap = snapshot(rnn.params)
    expect_error(ValueError, ["x:", "[T,B,D]"], rnn.forward, x[0])
    expect_error(TypeError, ["x:", "dtype float32", "float64"], rnn.forward, x.astype(np.float32))
    expect_error(ValueError, ["s0:", "[B,H]"], rnn.forward, x, s0[:, :2])
    expect_error(ValueError, ["d:", "[T,B,O]"], rnn.bptt, x, d[..., :1])
    expect_error(ValueError, ["loss:", "got 'mse'"], rnn.bptt, x, d, loss="mse")
    expect_error(ValueError, ["loss_steps:", "got 'first'"], rnn.bptt, x, d, loss_steps="first")
    expect_error(ValueError, ["loss='cross_entropy'", "softmax"], rnn.bptt, x, classes(), loss="cross_entropy")
    for key, value in (("cell", "lstm"), ("num_layers", 2), ("bidirectional", True), ("output_activation", "tanh")):
        expect_error(TypeError, [f"{key}:", f"RNN(..., {key}=...)", f"got {key}={value!r}"], rnn.bptt, x, d,
                     **{key: value})
    expect_error(TypeError, ["params:", "the model's", "RNN.forward"], rnn.forward, x, params=rnn.params)
    assert_unchanged(snap)


# ------------------------------------------------------------------------------------------------
# good calls: layouts, no mutation, dtypes, gradient keys


def _case(loss, dtype, bias=True, with_s0=True):
    params, x, d, s0 = make(dtype=dtype, bias=bias)
    kw = {}
    if loss == "cross_entropy":
        d, kw = classes(), dict(CE)
    return params, x, d, (s0 if with_s0 else None), kw


def _noncontiguous(a, kind):
    """The same values as ``a`` in an array that is not C-contiguous."""
    if kind == "transposed":  # a view of the transpose of a C-contiguous array
        return np.ascontiguousarray(a.T).T
    # a view taking every other element of a twice-as-large array
    big = np.zeros(tuple(2 * n for n in a.shape), dtype=a.dtype)
    view = big[tuple(slice(None, None, 2) for _ in a.shape)]
    view[...] = a
    return view


@pytest.mark.parametrize("backend", HOST_BACKENDS)
@pytest.mark.parametrize("kind", ["transposed", "strided"])
@pytest.mark.parametrize("loss", ["squared", "cross_entropy"])
def test_noncontiguous_inputs_match_contiguous(backend, kind, loss):
    params, x, d, s0, kw = _case(loss, np.float64)
    ncp = {k: _noncontiguous(v, kind) for k, v in params.items()}
    ncx, ncd, ncs0 = _noncontiguous(x, kind), _noncontiguous(d, kind), _noncontiguous(s0, kind)
    for a in (ncx, ncd, ncs0, ncp["Wx"], ncp["Ws"], ncp["Wy"]):
        assert not a.flags.c_contiguous
    snap = snapshot(ncp, ncx, ncd, ncs0)

    Y, S = gpubptt.forward(params, x, s0, output_activation=kw.get("output_activation", "identity"), backend=backend)
    nY, nS = gpubptt.forward(ncp, ncx, ncs0, output_activation=kw.get("output_activation", "identity"),
                             backend=backend)
    L, g = gpubptt.bptt(params, x, d, s0, backend=backend, **kw)
    nL, ng = gpubptt.bptt(ncp, ncx, ncd, ncs0, backend=backend, **kw)

    # float64, identical values, only the layout differs: the contiguous copies go through the same
    # operations, so anything beyond a few ulps would be a layout bug
    tol = dict(rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(nY, Y, **tol, err_msg="Y")
    np.testing.assert_allclose(nS, S, **tol, err_msg="S")
    np.testing.assert_allclose(nL, L, **tol, err_msg="L")
    assert set(ng) == set(g)
    for k in g:
        np.testing.assert_allclose(ng[k], g[k], **tol, err_msg=f"grads[{k!r}]")
    assert_unchanged(snap)


@pytest.mark.parametrize("backend", HOST_BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("loss", ["squared", "cross_entropy"])
@pytest.mark.parametrize("with_s0", [True, False])
@pytest.mark.parametrize("loss_steps", ["all", "last"])
def test_successful_calls_do_not_modify_inputs(backend, dtype, loss, with_s0, loss_steps):
    params, x, d, s0, kw = _case(loss, dtype, with_s0=with_s0)
    snap = snapshot(params, x, d, s0)
    Y, S = gpubptt.forward(params, x, s0, output_activation=kw.get("output_activation", "identity"), backend=backend)
    assert_unchanged(snap)
    L, grads = gpubptt.bptt(params, x, d, s0, loss_steps=loss_steps, backend=backend, **kw)
    assert_unchanged(snap)
    # and no result shares memory with an input: writing to a result cannot reach the caller's data
    inputs = [a for _, a, _ in snap]
    for name, out in [("Y", Y), ("S", S), *grads.items()]:
        for a in inputs:
            assert not np.shares_memory(out, a), f"result {name} shares memory with an input"


@pytest.mark.parametrize("backend", HOST_BACKENDS)
@pytest.mark.parametrize("loss", ["squared", "cross_entropy"])
def test_read_only_inputs_work(backend, loss):
    params, x, d, s0, kw = _case(loss, np.float32)
    L0, g0 = gpubptt.bptt(params, x, d, s0, backend=backend, **kw)
    for a in (x, d, s0, *params.values()):
        a.setflags(write=False)
    Y, S = gpubptt.forward(params, x, s0, output_activation=kw.get("output_activation", "identity"), backend=backend)
    L, g = gpubptt.bptt(params, x, d, s0, backend=backend, **kw)
    assert L == L0 and all(np.array_equal(g[k], g0[k]) for k in g0)


@pytest.mark.parametrize("backend", HOST_BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("loss", ["squared", "cross_entropy"])
@pytest.mark.parametrize("with_s0", [True, False])
def test_dtype_in_is_dtype_out(backend, dtype, loss, with_s0):
    params, x, d, s0, kw = _case(loss, dtype, with_s0=with_s0)
    Y, S = gpubptt.forward(params, x, s0, output_activation=kw.get("output_activation", "identity"), backend=backend)
    assert Y.dtype == dtype and S.dtype == dtype
    L, grads = gpubptt.bptt(params, x, d, s0, backend=backend, **kw)
    assert np.asarray(L).dtype == dtype and np.ndim(L) == 0
    for k, g in grads.items():
        assert g.dtype == dtype, f"grads[{k!r}] is {g.dtype}, expected {np.dtype(dtype)}"


@pytest.mark.parametrize("backend", HOST_BACKENDS)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("with_s0", [True, False])
def test_output_and_grad_shapes(backend, bias, with_s0):
    params, x, d, s0, kw = _case("squared", np.float64, bias=bias, with_s0=with_s0)
    Y, S = gpubptt.forward(params, x, s0, backend=backend)
    assert Y.shape == (T, B, O) and S.shape == (T, B, H)
    L, grads = gpubptt.bptt(params, x, d, s0, backend=backend)
    assert set(grads) == set(params) | {"x", "s0"}
    for k, v in params.items():
        assert grads[k].shape == v.shape, f"grads[{k!r}]"
    assert grads["x"].shape == (T, B, D) and grads["s0"].shape == (B, H)


@pytest.mark.parametrize("backend", HOST_BACKENDS)
def test_bias_false_model(backend):
    rnn = gpubptt.RNN(D, H, O, bias=False, dtype=np.float64, seed=3, backend=backend)
    assert set(rnn.params) == {"Wx", "Ws", "Wy", "by"}
    assert "bias=False" in repr(rnn)
    _, x, d, s0 = make()
    Y, S = rnn.forward(x, s0)
    L, grads = rnn.bptt(x, d, s0)
    assert set(grads) == {"Wx", "Ws", "Wy", "by", "x", "s0"}
    assert np.isfinite(L) and all(np.isfinite(g).all() for g in grads.values())
    # the same as a biased model whose recurrent biases are zero
    p0 = dict(rnn.params, bx=np.zeros(H), bs=np.zeros(H))
    Y0, S0 = gpubptt.forward(p0, x, s0, backend=backend)
    L0, g0 = gpubptt.bptt(p0, x, d, s0, backend=backend)
    np.testing.assert_allclose(Y, Y0, rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(S, S0, rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(L, L0, rtol=1e-13)
    for k in grads:
        np.testing.assert_allclose(grads[k], g0[k], rtol=1e-13, atol=1e-14, err_msg=f"grads[{k!r}]")


# ------------------------------------------------------------------------------------------------
# gated cells, stacked and bidirectional layers, lengths and the new options (issue 3)

CELL_STRUCTURES = [  # (cell, num_layers, bidirectional)
    ("lstm", 1, False), ("gru", 1, False), ("tanh", 2, False), ("lstm", 2, True), ("gru", 1, True),
    ("gru", 2, True), ("tanh", 1, True),
]


def _sid(v):
    return "-".join(map(str, v)) if isinstance(v, tuple) else str(v)


def make_net(cell="tanh", num_layers=1, bidirectional=False, dtype=np.float64, seed=0):
    """(params, x, d, s0, kw) for one structure; s0 is [B,H] or [L·dirs,B,H], a pair of them for LSTM,
    and ``kw`` the structure's keyword arguments for forward/bptt."""
    rng = np.random.default_rng(seed + 300)
    params = gpubptt.init_params(D, H, O, dtype=dtype, seed=seed, cell=cell, num_layers=num_layers,
                                 bidirectional=bidirectional)
    x = rng.standard_normal((T, B, D)).astype(dtype)
    d = rng.standard_normal((T, B, O)).astype(dtype)
    n = num_layers * (2 if bidirectional else 1)
    shape = (B, H) if n == 1 else (n, B, H)
    s0 = rng.standard_normal(shape).astype(dtype)
    if cell == "lstm":
        s0 = (s0, rng.standard_normal(shape).astype(dtype))
    return params, x, d, s0, dict(cell=cell, num_layers=num_layers, bidirectional=bidirectional)


# --- lengths


@pytest.mark.parametrize("which", ["forward", "bptt"])
@pytest.mark.parametrize("backend", HOST_BACKENDS)
@pytest.mark.parametrize("wrap", [np.array, list], ids=["array", "list"])
@pytest.mark.parametrize("values,lo,hi", [([0, T], 0, T), ([T + 1, 1], 1, T + 1), ([-1, T], -1, T), ([2, -3], -3, 2)])
def test_lengths_out_of_range(which, backend, wrap, values, lo, hi):
    params, x, d, s0 = make()
    lengths = wrap(values)
    msg = expect_error(ValueError, ["lengths:", f"[1, {T}]", f"got values in [{lo}, {hi}]"],
                       run, which, params, x, d, s0, lengths=lengths, backend=backend)
    assert list(lengths) == values, msg  # a list is not snapshotted by expect_error


@pytest.mark.parametrize("which", ["forward", "bptt"])
@pytest.mark.parametrize(
    "lengths,dtype",
    [(np.array([1.0, 2.0]), "float64"), (np.array([1, 2], np.float32), "float32"), (np.array([True, True]), "bool"),
     ([1.0, 2.0], "float64"), ([True, False], "bool"), ([1, 2.5], "float64"), ([T, True], "True")],
    ids=["array-f64", "array-f32", "array-bool", "list-float", "list-bool", "list-mixed", "list-int-and-bool"],
)
def test_lengths_not_integer(which, lengths, dtype):
    params, x, d, s0 = make()
    expect_error(TypeError, ["lengths:", "integer", dtype], run, which, params, x, d, s0, lengths=lengths)


@pytest.mark.parametrize("which", ["forward", "bptt"])
@pytest.mark.parametrize("lengths", [3, np.int64(3), "ab", {0: 1, 1: 2}], ids=["int", "np.int64", "str", "dict"])
def test_lengths_not_an_array(which, lengths):
    params, x, d, s0 = make()
    expect_error(TypeError, ["lengths:", "array", f"got {type(lengths).__name__}"],
                 run, which, params, x, d, s0, lengths=lengths)


@pytest.mark.parametrize("which", ["forward", "bptt"])
@pytest.mark.parametrize(
    "lengths",
    [np.full((B, 1), T), np.full((1, B), T), np.full(B + 1, T), np.full(B - 1, T), np.array(T), [[T]] * B,
     np.zeros(0, np.int64)],
    ids=["B,1", "1,B", "B+1", "B-1", "0-d", "list-B,1", "empty"],
)
def test_lengths_wrong_shape(which, lengths):
    params, x, d, s0 = make()
    got = shape_str(np.shape(lengths))
    expect_error(ValueError, ["lengths:", "[B]", f"({B},)", f"got {got}"], run, which, params, x, d, s0, lengths=lengths)


@pytest.mark.parametrize("backend", HOST_BACKENDS)
@pytest.mark.parametrize("wrap", [list, tuple, lambda v: np.array(v, np.uint8), lambda v: np.array(v, np.int32)],
                         ids=["list", "tuple", "uint8", "int32"])
@pytest.mark.parametrize("structure", [("tanh", 1, False), ("lstm", 2, True)], ids=_sid)
def test_lengths_as_list_or_any_integer_dtype_work(backend, wrap, structure):
    params, x, d, s0, kw = make_net(*structure)
    values = [T, 2]
    lengths = wrap(values)
    snap = snapshot(params, x, d, s0, lengths)
    fwd = gpubptt.forward(params, x, s0, backend=backend, lengths=lengths, return_state=True, **kw)
    ref_fwd = gpubptt.forward(params, x, s0, backend=backend, lengths=np.array(values), return_state=True, **kw)
    L, g = gpubptt.bptt(params, x, d, s0, backend=backend, lengths=lengths, **kw)
    ref_L, ref_g = gpubptt.bptt(params, x, d, s0, backend=backend, lengths=np.array(values), **kw)
    assert_unchanged(snap)
    assert list(lengths) == values
    for a, b in zip(_leaves(fwd), _leaves(ref_fwd)):
        assert np.array_equal(a[1], b[1]), a[0]
    assert L == ref_L
    for path, a in _leaves(g):
        assert np.array_equal(a, dict(_leaves(ref_g))[path]), path
    # and lengths do something: sequence 1 stops after 2 steps, so its loss differs from a full one
    assert L != gpubptt.bptt(params, x, d, s0, backend=backend, **kw)[0]


# --- targets outside the loss: padding


@pytest.mark.parametrize("backend", HOST_BACKENDS)
@pytest.mark.parametrize("loss", ["squared", "cross_entropy"])
@pytest.mark.parametrize("lengths,loss_steps", [([T, 2], "all"), (None, "last"), (None, 2), ([T, 3], 1),
                                                ([T, 3], (2, 0))])
def test_targets_outside_the_loss_are_not_read(backend, loss, lengths, loss_steps):
    """Where a step is outside the loss (past a sequence's length, or before its last loss_steps), d is
    never read: padding there (-100 classes, NaN) gives the loss and gradients of any valid value,
    and the caller's d is left as it was. Inside the loss the same values are still refused."""
    params, x, d, s0 = make()
    kw = dict(loss=loss, loss_steps=loss_steps, lengths=lengths, backend=backend)
    if loss == "cross_entropy":
        d, kw["output_activation"], pad = classes(), "softmax", -100
    else:
        pad = np.nan
    n = np.full(B, T) if lengths is None else np.array(lengths)
    k = np.array(loss_steps) if isinstance(loss_steps, tuple) else {"all": T, "last": 1}.get(loss_steps, loss_steps)
    t = np.arange(T)[:, None]
    outside = (t >= n) | (t < n - k)
    assert outside.any() and not outside.all()
    padded = d.copy()
    padded[outside] = pad
    snap = snapshot(padded)
    L, g = gpubptt.bptt(params, x, padded, s0, **kw)
    assert_unchanged(snap)
    ref_L, ref_g = gpubptt.bptt(params, x, d, s0, **kw)
    assert L == ref_L and all(np.array_equal(g[key], ref_g[key]) for key in ref_g)
    inside = padded.copy()
    inside[np.argwhere(~outside)[0][0], np.argwhere(~outside)[0][1]] = pad
    fragment = "got values in [-100," if loss == "cross_entropy" else "contains NaN or Inf"
    expect_error(ValueError, ["d:", fragment, "at the steps in the loss"], gpubptt.bptt, params, x, inside, s0, **kw)


# --- s0 of the wrong structure for the cell


@pytest.mark.parametrize("which", ["forward", "bptt"])
@pytest.mark.parametrize("pick", ["h0", "c0", "stacked"])
def test_s0_single_array_for_lstm(which, pick):
    params, x, d, (h0, c0), kw = make_net("lstm")
    s0 = {"h0": h0, "c0": c0, "stacked": np.stack([h0, c0])}[pick]
    expect_error(TypeError, ["s0:", "cell='lstm'", "pair (h0, c0)", "got ndarray"], run, which, params, x, d, s0, **kw)


@pytest.mark.parametrize("which", ["forward", "bptt"])
@pytest.mark.parametrize("n", [1, 3])
def test_s0_tuple_of_wrong_length_for_lstm(which, n):
    params, x, d, (h0, c0), kw = make_net("lstm")
    s0 = (h0, c0, c0)[:n]
    expect_error(TypeError, ["s0:", "cell='lstm'", "pair (h0, c0)", "got a tuple of"], run, which, params, x, d, s0, **kw)


@pytest.mark.parametrize("which", ["forward", "bptt"])
@pytest.mark.parametrize("cell", ["gru", "tanh", "relu"])
@pytest.mark.parametrize("container", [tuple, list])
def test_s0_pair_for_a_cell_without_cell_state(which, cell, container):
    params, x, d, s0, kw = make_net(cell)
    pair = container([s0, s0.copy()])
    expect_error(TypeError, ["s0:", f"cell={cell!r}", "one array", f"got a {container.__name__}"],
                 run, which, params, x, d, pair, **kw)


@pytest.mark.parametrize("which", ["forward", "bptt"])
@pytest.mark.parametrize(
    "part,shape",
    [(1, (B, H - 2)), (0, (B + 1, H)), (1, (H,)), (0, (1, B, H)), (1, (B, H, 1))],
    ids=str,
)
def test_s0_lstm_pair_with_wrong_shape(which, part, shape):
    params, x, d, s0, kw = make_net("lstm")
    s0 = list(s0)
    s0[part] = np.zeros(shape)
    expect_error(ValueError, [f"s0[{part}]:", "[B,H]", f"({B}, {H})", f"got {shape_str(shape)}"],
                 run, which, params, x, d, tuple(s0), **kw)


@pytest.mark.parametrize("which", ["forward", "bptt"])
@pytest.mark.parametrize("part", [0, 1])
def test_s0_lstm_pair_bad_parts(which, part):
    params, x, d, s0, kw = make_net("lstm")

    def with_part(value):
        s = list(s0)
        s[part] = value
        return tuple(s)

    name = f"s0[{part}]:"
    expect_error(TypeError, [name, "NumPy or CuPy array", "got list"], run, which, params, x, d,
                 with_part(s0[part].tolist()), **kw)
    expect_error(TypeError, [name, "float32 or float64", "got int64"], run, which, params, x, d,
                 with_part(s0[part].astype(np.int64)), **kw)
    expect_error(TypeError, [name, "dtype float32", "other arrays' float64"], run, which, params, x, d,
                 with_part(s0[part].astype(np.float32)), **kw)
    bad = s0[part].copy()
    bad[1, 2] = np.nan
    expect_error(ValueError, [name, "NaN or Inf"], run, which, params, x, d, with_part(bad), **kw)


@pytest.mark.parametrize("which", ["forward", "bptt"])
@pytest.mark.parametrize(
    "structure,shape",
    [
        (("tanh", 2, False), (B, H)),  # [B,H] where num_layers=2 needs [2,B,H]
        (("tanh", 2, False), (3, B, H)),
        (("tanh", 2, False), (1, B, H)),
        (("gru", 1, True), (B, H)),  # bidirectional: [2,B,H]
        (("gru", 1, True), (1, B, H)),
        (("tanh", 2, True), (2, B, H)),  # two layers, both directions: [4,B,H]
        (("tanh", 2, True), (4, B + 1, H)),
        (("tanh", 2, True), (4, B, H + 1)),
    ],
    ids=_sid,
)
def test_s0_wrong_shape_for_layers_and_directions(which, structure, shape):
    params, x, d, _, kw = make_net(*structure)
    n = structure[1] * (2 if structure[2] else 1)
    expect_error(ValueError, ["s0:", "[L·dirs,B,H]", f"({n}, {B}, {H})", f"got {shape_str(shape)}"],
                 run, which, params, x, d, np.zeros(shape), **kw)


@pytest.mark.parametrize("which", ["forward", "bptt"])
def test_s0_lstm_pair_of_single_layer_states_for_two_layers(which):
    params, x, d, (h0, c0), kw = make_net("lstm", 2)
    expect_error(ValueError, ["s0[0]:", "[L·dirs,B,H]", f"(2, {B}, {H})", f"got ({B}, {H})"],
                 run, which, params, x, d, (h0[0], c0[0]), **kw)
    expect_error(ValueError, ["s0[1]:", "[L·dirs,B,H]", f"(2, {B}, {H})", f"got (3, {B}, {H})"],
                 run, which, params, x, d, (h0, np.zeros((3, B, H))), **kw)


# --- parameter dicts that do not fit the structure


@pytest.mark.parametrize("which", ["forward", "bptt"])
@pytest.mark.parametrize(
    "built,called,missing,unknown",
    [
        (("tanh", 1, False), ("tanh", 2, False), ["'Wx_l0'", "'Ws_l0'", "'Wx_l1'", "'Ws_l1'"], ["'Wx'", "'Ws'", "'bx'", "'bs'"]),
        (("tanh", 1, False), ("tanh", 1, True), ["'Wx_l0'", "'Wx_l0_reverse'", "'Ws_l0_reverse'"], ["'Wx'", "'bs'"]),
        (("lstm", 2, False), ("lstm", 1, False), ["'Wx'", "'Ws'"], ["'Wx_l0'", "'Ws_l1'", "'bx_l1'"]),
        (("gru", 1, True), ("gru", 1, False), ["'Wx'", "'Ws'"], ["'Wx_l0_reverse'", "'bs_l0'"]),
        (("lstm", 2, True), ("lstm", 2, False), [], ["'Wx_l0_reverse'", "'Ws_l1_reverse'", "'bs_l1_reverse'"]),
        (("lstm", 2, False), ("lstm", 3, False), ["'Wx_l2'", "'Ws_l2'", "'bx_l2'", "'bs_l2'"], []),
        (("tanh", 2, False), ("tanh", 2, True), ["'Wx_l0_reverse'", "'Ws_l1_reverse'"], []),
    ],
    ids=lambda v: _sid(v) if isinstance(v, tuple) else None,
)
def test_params_keys_do_not_fit_the_structure(which, built, called, missing, unknown):
    params, x, d, _, _ = make_net(*built)
    cell, num_layers, bidirectional = called
    fragments = ["params:", f"num_layers={num_layers}", f"bidirectional={bidirectional}"]
    fragments += (["missing key(s)"] + missing if missing else []) + (["unknown key(s)"] + unknown if unknown else [])
    msg = expect_error(ValueError, fragments, run, which, params, x, d, None, cell=cell, num_layers=num_layers,
                       bidirectional=bidirectional)
    if not missing:
        assert "missing" not in msg, msg
    if not unknown:
        assert "unknown" not in msg, msg


@pytest.mark.parametrize("which", ["forward", "bptt"])
@pytest.mark.parametrize("key", ["Ws_l1_reverse", "bx_l0", "Wx_l1"])
def test_params_one_key_missing_in_a_deep_model(which, key):
    params, x, d, s0, kw = make_net("lstm", 2, True)
    del params[key]
    msg = expect_error(ValueError, ["params:", f"missing key(s) {key!r}"], run, which, params, x, d, s0, **kw)
    assert "unknown" not in msg


@pytest.mark.parametrize("which", ["forward", "bptt"])
@pytest.mark.parametrize(
    "built,called",
    [("lstm", "gru"), ("gru", "lstm"), ("tanh", "lstm"), ("lstm", "tanh"), ("tanh", "gru")],
    ids=lambda v: v,
)
def test_params_of_another_cell(which, built, called):
    # the keys of every cell are the same, the gate blocks differ: Ws [G·H,H] names the mismatch
    params, x, d, _, _ = make_net(built)
    G = {"lstm": 4, "gru": 3}
    g_built, g_called = G.get(built, 1), G.get(called, 1)
    names = f"[{g_called}H,H]" if g_called > 1 else "[H,H]"
    expect_error(ValueError, ["params['Ws']:", names, f"({g_called * H}, {H})", f"got ({g_built * H}, {H})"],
                 run, which, params, x, d, None, cell=called)


@pytest.mark.parametrize("which", ["forward", "bptt"])
def test_params_upper_layer_reads_both_directions(which):
    params, x, d, s0, kw = make_net("gru", 2, True)
    params["Wx_l1"] = params["Wx_l1"][:, :H].copy()  # [3H,H]: the width of one direction only
    expect_error(ValueError, ["params['Wx_l1']:", "[3H,2H]", f"({3 * H}, {2 * H})", f"got ({3 * H}, {H})"],
                 run, which, params, x, d, s0, **kw)
    params, x, d, s0, kw = make_net("gru", 2, True)
    params["Wy"] = params["Wy"][:, :H].copy()
    expect_error(ValueError, ["params['Wy']:", "[O,2H]", f"({O}, {2 * H})", f"got ({O}, {H})"],
                 run, which, params, x, d, s0, **kw)


# --- num_layers, bidirectional


@pytest.mark.parametrize("which", ["forward", "bptt", "RNN", "init_params"])
@pytest.mark.parametrize("value", [0, -1, 1.5, 2.0, True, "2", None], ids=repr)
def test_bad_num_layers(which, value):
    params, x, d, s0 = make()
    fragments = ["num_layers:", "positive integer", f"got {value!r}"]
    if which in ("RNN", "init_params"):
        fn = gpubptt.RNN if which == "RNN" else gpubptt.init_params
        expect_error(ValueError, fragments, fn, D, H, O, num_layers=value)
    else:
        expect_error(ValueError, fragments, run, which, params, x, d, s0, num_layers=value)


@pytest.mark.parametrize("which", ["forward", "bptt", "RNN", "init_params"])
@pytest.mark.parametrize("value", [1, 0, "True", None, np.float64(1.0)], ids=repr)
def test_bidirectional_not_a_bool(which, value):
    params, x, d, s0 = make()
    fragments = ["bidirectional:", "True or False", f"got {value!r}"]
    if which in ("RNN", "init_params"):
        fn = gpubptt.RNN if which == "RNN" else gpubptt.init_params
        expect_error(TypeError, fragments, fn, D, H, O, bidirectional=value)
    else:
        expect_error(TypeError, fragments, run, which, params, x, d, s0, bidirectional=value)


# --- bptt's truncate, clip_step, loss_steps; forward's and bptt's state_step; return_cells


@pytest.mark.parametrize("value", [0, -1, -5, 1.5, 2.0, True, "2", [2]], ids=repr)
def test_bad_truncate(value):
    params, x, d, s0 = make()
    expect_error(ValueError, ["truncate:", "positive integer", f"got {value!r}"], run, "bptt", params, x, d, s0,
                 truncate=value)


@pytest.mark.parametrize("value", [0, 0.0, -1, -0.5, np.nan, np.inf, -np.inf, 10 ** 400], ids=repr)
def test_bad_clip_step(value):
    params, x, d, s0 = make()
    expect_error(ValueError, ["clip_step:", "positive finite number", f"got {value!r}"], run, "bptt", params, x, d, s0,
                 clip_step=value)


@pytest.mark.parametrize("value", ["1", True, [1.0]], ids=repr)
def test_clip_step_of_the_wrong_type(value):
    params, x, d, s0 = make()
    expect_error(TypeError, ["clip_step:", "positive number or None", f"got {value!r}"], run, "bptt", params, x, d, s0,
                 clip_step=value)


@pytest.mark.parametrize("value", [0, -1, True, False, 2.5, 2.0, "first", "All", None], ids=repr)
def test_bad_loss_steps(value):
    params, x, d, s0 = make()
    expect_error(ValueError, ["loss_steps:", "'all', 'last'", "positive int", f"got {value!r}"],
                 run, "bptt", params, x, d, s0, loss_steps=value)


@pytest.mark.parametrize("value,error,fragments", [
    ([1, 2, 3], ValueError, ["expected shape [B] = (2,), got (3,)"]),
    (np.array([[1, 2]]), ValueError, ["one integer k >= 0 per sequence [B]", "got array([[1, 2]])"]),
    ([2, -1], ValueError, ["values must be >= 0, got values in [-1, 2]"]),
    ([1.0, 2.0], TypeError, ["expected integers, got values of dtype float64"]),
    (np.array([1.0, 2.0]), TypeError, ["expected an integer dtype, got float64"]),
    ([True, 1], TypeError, ["expected integers, got a bool in [True, 1]"]),
    ([[1], [2, 3]], TypeError, ["expected a flat list or array of B integers"]),
], ids=repr)
def test_bad_loss_steps_per_sequence(value, error, fragments):
    params, x, d, s0 = make()
    expect_error(error, ["loss_steps:", *fragments], run, "bptt", params, x, d, s0, loss_steps=value)


@pytest.mark.parametrize("which", ["forward", "bptt"])
@pytest.mark.parametrize("value", [0, -1, 1.5, True, "1"], ids=repr)
def test_bad_state_step(which, value):
    params, x, d, s0 = make()
    expect_error(ValueError, ["state_step:", "positive integer", f"got {value!r}"],
                 run, which, params, x, d, s0, state_step=value, return_state=True)


@pytest.mark.parametrize("which", ["forward", "bptt"])
@pytest.mark.parametrize("value", [T + 1, 10 * T])
def test_state_step_past_the_end(which, value):
    params, x, d, s0 = make()
    expect_error(ValueError, ["state_step:", f"1..T = 1..{T}", f"got {value}"],
                 run, which, params, x, d, s0, state_step=value, return_state=True)


@pytest.mark.parametrize("which", ["forward", "bptt"])
@pytest.mark.parametrize("structure", [("tanh", 1, True), ("lstm", 2, True)], ids=_sid)
def test_state_step_with_bidirectional(which, structure):
    params, x, d, s0, kw = make_net(*structure)
    expect_error(ValueError, ["state_step:", "forward direction only", "bidirectional=True"],
                 run, which, params, x, d, s0, state_step=2, return_state=True, **kw)


@pytest.mark.parametrize("backend", HOST_BACKENDS)
@pytest.mark.parametrize("cell", ["tanh", "relu", "gru"])
def test_return_cells_needs_lstm(backend, cell):
    params, x, d, s0, kw = make_net(cell)
    expect_error(ValueError, ["return_cells:", "cell='lstm'", f"got cell={cell!r}"],
                 run, "forward", params, x, d, s0, return_cells=True, backend=backend, **kw)


@pytest.mark.parametrize("value", [1, "yes", None])
def test_return_cells_is_true_or_false(value):
    params, x, d, s0, kw = make_net("lstm")
    expect_error(TypeError, ["return_cells:", "True or False", f"got {value!r}"],
                 run, "forward", params, x, d, s0, return_cells=value, **kw)


@pytest.mark.parametrize("backend", HOST_BACKENDS)
@pytest.mark.parametrize("structure", [("lstm", 2, True), ("gru", 1, False), ("tanh", 1, False)], ids=_sid)
def test_option_boundaries_and_integer_types(backend, structure):
    """Values at the edge of each option's range are accepted and mean what the docstrings say:
    loss_steps=1 is "last", loss_steps=T is "all" (so is any larger k, even past int64), truncate=T
    (or past int64) and a huge clip_step change nothing; NumPy integers (unsigned too) work wherever a
    Python int does, and any real number (a Fraction) as clip_step."""
    params, x, d, s0, kw = make_net(*structure)
    kw.update(backend=backend, lengths=np.array([T, 2]))

    def same(a, b, what):
        La, ga = a
        Lb, gb = b
        np.testing.assert_allclose(La, Lb, rtol=1e-13, err_msg=what)
        for (path, u), (_, v) in zip(_leaves(ga), _leaves(gb)):
            np.testing.assert_allclose(u, v, rtol=1e-13, atol=1e-15, err_msg=f"{what}: {path}")

    full = gpubptt.bptt(params, x, d, s0, **kw)
    same(gpubptt.bptt(params, x, d, s0, loss_steps=1, **kw), gpubptt.bptt(params, x, d, s0, loss_steps="last", **kw),
         "loss_steps=1")
    same(gpubptt.bptt(params, x, d, s0, loss_steps=T, **kw), full, "loss_steps=T")
    same(gpubptt.bptt(params, x, d, s0, loss_steps=np.int64(10 * T), **kw), full, "loss_steps=10T")
    same(gpubptt.bptt(params, x, d, s0, truncate=np.int32(T), **kw), full, "truncate=T")
    same(gpubptt.bptt(params, x, d, s0, truncate=2 ** 63, **kw), full, "truncate=2**63")
    same(gpubptt.bptt(params, x, d, s0, loss_steps=2 ** 70, **kw), full, "loss_steps=2**70")
    same(gpubptt.bptt(params, x, d, s0, clip_step=1e30, **kw), full, "clip_step=1e30")
    same(gpubptt.bptt(params, x, d, s0, truncate=np.uint64(2), loss_steps=np.uint8(3), **kw),
         gpubptt.bptt(params, x, d, s0, truncate=2, loss_steps=3, **kw), "unsigned truncate and loss_steps")
    same(gpubptt.bptt(params, x, d, s0, clip_step=Fraction(1, 2), **kw),
         gpubptt.bptt(params, x, d, s0, clip_step=0.5, **kw), "clip_step=Fraction(1, 2)")
    kw.update(num_layers=np.int64(kw["num_layers"]), bidirectional=np.bool_(kw["bidirectional"]))
    same(gpubptt.bptt(params, x, d, s0, **kw), full, "NumPy num_layers and bidirectional")


@pytest.mark.parametrize("backend", HOST_BACKENDS)
@pytest.mark.parametrize("cell", ["tanh", "lstm"])
def test_state_step_default_is_the_end(backend, cell):
    params, x, d, s0, kw = make_net(cell, 2)
    kw.update(backend=backend, return_state=True)
    default = gpubptt.forward(params, x, s0, **kw)[-1]
    for step in (T, np.int64(T)):
        last = gpubptt.forward(params, x, s0, state_step=step, **kw)[-1]
        for (path, a), (_, b) in zip(_leaves(last), _leaves(default)):
            assert np.array_equal(a, b), path
    first = gpubptt.forward(params, x, s0, state_step=1, **kw)[-1]
    assert not np.array_equal(next(_leaves(first))[1], next(_leaves(default))[1])


# --- good calls of every structure: no mutation, no shared memory, dtype in is dtype out, layouts


def _good_calls(structure, dtype, backend, with_s0=True, lengths=True):
    """forward (with cells for LSTM, and the state) and bptt (with every option) on one structure."""
    params, x, d, s0, kw = make_net(*structure, dtype=dtype)
    s0 = s0 if with_s0 else None
    lengths = np.array([T, 2]) if lengths else None
    kw.update(backend=backend, lengths=lengths)
    snap = snapshot(params, x, d, s0, lengths)
    fwd = gpubptt.forward(params, x, s0, return_state=True, return_cells=structure[0] == "lstm", **kw)
    assert_unchanged(snap)
    opts = dict(truncate=2, clip_step=0.5, loss_steps=3) if structure[2] else dict(state_step=2, loss_steps="last")
    L, grads, state = gpubptt.bptt(params, x, d, s0, return_state=True, **opts, **kw)
    assert_unchanged(snap)
    return params, x, s0, snap, fwd, L, grads, state


@pytest.mark.parametrize("backend", HOST_BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("with_s0", [True, False])
@pytest.mark.parametrize("structure", CELL_STRUCTURES, ids=_sid)
def test_structured_calls_do_not_modify_inputs(backend, dtype, with_s0, structure):
    *_, snap, fwd, L, grads, state = _good_calls(structure, dtype, backend, with_s0)
    inputs = [a for _, a, _ in snap]
    for path, out in _leaves((fwd, grads, state), "result"):
        for a in inputs:
            assert not np.shares_memory(out, a), f"{path} shares memory with an input"


@pytest.mark.parametrize("backend", HOST_BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("with_s0", [True, False])
@pytest.mark.parametrize("structure", CELL_STRUCTURES, ids=_sid)
def test_structured_dtype_in_is_dtype_out(backend, dtype, with_s0, structure):
    _, _, _, _, fwd, L, grads, state = _good_calls(structure, dtype, backend, with_s0)
    assert np.asarray(L).dtype == dtype and np.ndim(L) == 0

    def check(obj, path):  # every output, down to each half of an LSTM pair, is an array of x's dtype
        if isinstance(obj, (tuple, dict)):
            for k, v in (obj.items() if isinstance(obj, dict) else enumerate(obj)):
                check(v, f"{path}[{k!r}]")
        else:
            assert isinstance(obj, np.ndarray), f"{path} is a {type(obj).__name__}"
            assert obj.dtype == dtype, f"{path} is {obj.dtype}, expected {np.dtype(dtype)}"

    check(fwd, "forward")
    check(grads, "grads")
    check(state, "bptt's state")


@pytest.mark.parametrize("backend", HOST_BACKENDS)
@pytest.mark.parametrize("with_s0", [True, False])
@pytest.mark.parametrize("structure", CELL_STRUCTURES, ids=_sid)
def test_structured_output_and_grad_shapes(backend, with_s0, structure):
    cell, num_layers, bidirectional = structure
    params, x, s0, _, fwd, L, grads, state = _good_calls(structure, np.float64, backend, with_s0)
    dirs = 2 if bidirectional else 1
    n = num_layers * dirs
    state_shape = (B, H) if n == 1 else (n, B, H)
    lstm = cell == "lstm"
    assert len(fwd) == 3 + lstm
    Y, S = fwd[:2]
    assert Y.shape == (T, B, O) and S.shape == (T, B, dirs * H)
    if lstm:
        assert fwd[2].shape == (T, B, dirs * H)
    assert set(grads) == set(params) | {"x", "s0"}
    for k, v in params.items():
        assert grads[k].shape == v.shape, f"grads[{k!r}]"
    assert grads["x"].shape == (T, B, D)
    for what, s in (("forward's state", fwd[-1]), ("bptt's state", state), ('grads["s0"]', grads["s0"])):
        if lstm:  # the pair (h, c), as s0 takes it
            assert isinstance(s, tuple) and len(s) == 2, what
            assert s[0].shape == state_shape and s[1].shape == state_shape, what
        else:
            assert isinstance(s, np.ndarray) and s.shape == state_shape, what
    # the returned state is ready to pass on as the next s0
    gpubptt.forward(params, x, fwd[-1], backend=backend, **dict(zip(("cell", "num_layers", "bidirectional"), structure)))


@pytest.mark.parametrize("backend", HOST_BACKENDS)
@pytest.mark.parametrize("structure", [("lstm", 2, True), ("gru", 2, False)], ids=_sid)
def test_structured_read_only_and_noncontiguous_inputs(backend, structure):
    params, x, d, s0, kw = make_net(*structure)
    kw.update(backend=backend, lengths=np.array([2, T]))
    L0, g0 = gpubptt.bptt(params, x, d, s0, **kw)
    ncp = {k: _noncontiguous(v, "strided") for k, v in params.items()}
    ncs0 = tuple(_noncontiguous(a, "transposed") for a in s0) if isinstance(s0, tuple) else _noncontiguous(s0, "transposed")
    lengths = _noncontiguous(kw.pop("lengths"), "strided")
    for _, a in _leaves((ncp, ncs0, x, d, lengths)):
        a.setflags(write=False)
    L, g = gpubptt.bptt(ncp, x, d, ncs0, lengths=lengths, **kw)
    np.testing.assert_allclose(L, L0, rtol=1e-13)
    for (path, a), (_, b) in zip(_leaves(g), _leaves(g0)):
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-14, err_msg=path)


@pytest.mark.parametrize("backend", HOST_BACKENDS)
def test_rnn_with_structure_validates_and_runs(backend):
    rnn = gpubptt.RNN(D, H, O, cell="lstm", num_layers=2, bidirectional=True, dtype=np.float64, seed=0,
                      backend=backend)
    assert "num_layers=2, bidirectional=True" in repr(rnn) and "cell='lstm'" in repr(rnn)
    _, x, d, s0, _ = make_net("lstm", 2, True)
    snap = snapshot(rnn.params)
    expect_error(TypeError, ["s0:", "pair (h0, c0)"], rnn.forward, x, s0[0])
    expect_error(ValueError, ["s0[0]:", "[L·dirs,B,H]"], rnn.forward, x, (s0[0][:2], s0[1]))
    expect_error(ValueError, ["lengths:", f"[1, {T}]"], rnn.forward, x, s0, lengths=[0, 1])
    expect_error(ValueError, ["state_step:", "bidirectional=True"], rnn.forward, x, s0, state_step=1)
    expect_error(ValueError, ["truncate:"], rnn.bptt, x, d, s0, truncate=0)
    expect_error(ValueError, ["loss_steps:"], rnn.bptt, x, d, s0, loss_steps=0)
    assert_unchanged(snap)
    Y, S, C, state = rnn.forward(x, s0, lengths=[T, 1], return_cells=True, return_state=True)
    L, grads = rnn.bptt(x, d, s0, lengths=[T, 1], loss_steps=2, truncate=2, clip_step=1.0)
    assert S.shape == C.shape == (T, B, 2 * H) and isinstance(state, tuple) and isinstance(grads["s0"], tuple)
    assert_unchanged(snap)


@pytest.mark.parametrize("which", ["forward", "bptt"])
def test_lengths_ragged_list(which):
    params, x, d, s0 = make()
    expect_error(TypeError, ["lengths:"], run, which, params, x, d, s0, lengths=[1, [2]])


@pytest.mark.parametrize("made,given", [("lstm", "tanh"), ("gru", "lstm"), ("lstm", "gru")])
def test_a_gated_cells_weights_given_with_another_cell_are_named(made, given):
    """Parameters made for one cell and passed with another: the error says whose weight it is."""
    params = gpubptt.init_params(D, H, O, cell=made, dtype=np.float64, seed=0)
    x = make()[1]
    G = {"lstm": 4, "gru": 3}[made]
    expect_error(ValueError, ["params['Ws']:", f"for cell={given!r}", f"got ({G * H}, {H})",
                              f"[{G}H,H] is the weight of cell={made!r}"], gpubptt.forward, params, x, cell=given)


# --- the value checks of one call are read back together


class _CountingModule:
    """NumPy under another name: ValueChecks takes the arrays of a module that is not NumPy for device
    arrays, whose results it reads back in one transfer; ``stacks`` counts those transfers."""

    def __init__(self):
        self.stacks = 0

    def __getattr__(self, name):
        return getattr(np, name)

    def stack(self, arrays):
        self.stacks += 1
        return np.stack(arrays)


@pytest.mark.parametrize("bad", [None, "params['Ws']", "x", "s0", "d"])
def test_a_calls_value_checks_are_read_back_at_once_as_for_a_gpu(bad, monkeypatch):
    """With the arrays taken for a device module's, a bptt call reads its value checks (finiteness of
    every parameter, x, s0 and d; d's range) back in one transfer, and a failing one is still named."""
    from gpubptt import arrays

    module = _CountingModule()
    # lengths (the one 1-D integer array) stay NumPy's: bptt reads them on the host, as on a GPU
    monkeypatch.setattr(arrays, "_xp", lambda a: np if a.ndim == 1 and a.dtype.kind in "iu" else module)
    params, x, d, s0 = make()
    target = {"params['Ws']": params["Ws"], "x": x, "s0": s0, "d": d}.get(bad)
    if target is not None:
        target[0, 0] = np.nan
        with pytest.raises(ValueError, match=rf"^{re.escape(bad)}: contains NaN or Inf$"):
            gpubptt.bptt(params, x, d, s0, backend="cpu")
    else:
        L, _ = gpubptt.bptt(params, x, d, s0, backend="cpu")
        assert np.isfinite(L)
    assert module.stacks == 1
    module.stacks = 0
    kw = dict(output_activation="softmax", loss="cross_entropy", lengths=[T, 2], backend="cpu")
    c = classes()
    c[2:, 1] = -100  # padding past the second sequence's length: never read
    if bad is None:
        assert np.isfinite(gpubptt.bptt(params, x, c, s0, **kw)[0])
        c[0, 1] = O
        with pytest.raises(ValueError, match=rf"d: values must lie in \[0, {O - 1}\] at the steps in the loss, "
                                             rf"got values in \[0, {O}\]"):
            gpubptt.bptt(params, x, c, s0, **kw)
        assert module.stacks == 2
