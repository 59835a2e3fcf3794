"""Bad input to the public calls (DESIGN.md §6 rule 9), and the input/output contract of good calls.

First tier: no GPU, simulator off, tiny sizes, backends "cpu" and "reference" only.

Every bad input must raise the documented error type (ValueError for a wrong value or shape,
TypeError for a wrong type or dtype) with a message that names the argument and what was expected
or received, and must leave the caller's arrays exactly as they were.
"""
import numpy as np
import pytest

import gpubptt
from gpubptt.backend import ENV_VAR

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
    """Call fn, assert it raises exactly ``exc`` with every fragment in its message, inputs unchanged."""
    snap = snapshot(args, kwargs)
    with pytest.raises((ValueError, TypeError)) as info:
        fn(*args, **kwargs)
    msg = str(info.value)
    assert type(info.value) is exc, f"expected {exc.__name__}, got {type(info.value).__name__}: {msg}"
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
    params, x, d, s0 = make()
    expect_error(TypeError, ["s0:", "got list"], run, which, params, x, d, s0.tolist())


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
    expect_error(ValueError, ["params:", f"missing key(s) {absent!r}", "bx and bs both, or neither"],
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


# a wrong shape for each parameter (the others right); for Wx and Wy the rank check comes first
WRONG_PARAM_SHAPES = {
    "Ws": [((H, H + 1), "[H,H]", f"({H}, {H})"), ((H,), "[H,H]", f"({H}, {H})"), ((1, H, H), "[H,H]", f"({H}, {H})")],
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
def test_param_Wx_wrong_H_is_reported_against_Ws(which):
    # H is read from Wx, so a Wx of the wrong height shows up as Ws not matching it
    params, x, d, s0 = make()
    params["Wx"] = np.zeros((H + 1, D))
    expect_error(ValueError, ["params['Ws']:", "[H,H]", f"({H + 1}, {H + 1})", f"got ({H}, {H})"],
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
        ("cell", "lstm", "'tanh', 'relu', 'sigmoid', 'identity'"),
        ("cell", "Tanh", "'tanh'"),
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
        ("loss_steps", "first", "'all', 'last'"),
        ("loss_steps", 1, "'all', 'last'"),
    ],
)
def test_unknown_loss_choice(arg, value, choices):
    params, x, d, s0 = make()
    expect_error(ValueError, [f"{arg}:", "expected one of", choices, f"got {value!r}"],
                 run, "bptt", params, x, d, s0, **{arg: value})


@pytest.mark.parametrize("which", ["forward", "bptt"])
@pytest.mark.parametrize("value", ["gpu", "CPU", "numpy", " cpu"])
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
    [("cell", "lstm"), ("cell", "gru"), ("output_activation", "relu"), ("backend", "gpu"), ("backend", "numpy")],
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
