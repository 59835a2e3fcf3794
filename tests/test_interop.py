"""gpubptt.interop: from_torch/to_torch between our parameter dicts and PyTorch's state_dict layout
(torch.nn.RNN/LSTM/GRU keys plus the output nn.Linear under ``out.``). Round trips, no change to the
caller's dict, and clear errors for bad input. Runs with NumPy arrays always, with torch tensors where
torch is importable."""
import copy

import numpy as np
import pytest

import gpubptt
from gpubptt import interop

try:
    import torch
except ImportError:  # the NumPy half of this file needs no torch
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="torch not installed: the torch-tensor cases need it")

GATES = {"lstm": 4, "gru": 3}
D, H, O = 3, 4, 2
# (num_layers, bidirectional, bias)
STRUCTURES = [(1, False, True), (1, False, False), (1, True, True), (2, False, True), (2, True, False),
              (3, True, True)]
TORCH_CELLS = ["tanh", "relu", "lstm", "gru"]


def structure_id(s):
    return f"L{s[0]}-{'bi' if s[1] else 'uni'}-{'bias' if s[2] else 'nobias'}"


def torch_layout(cell, num_layers, bidirectional, bias):
    """[(key, shape)] of torch's state_dict for the model, written out here from PyTorch's documented
    scheme (independently of interop.key_map)."""
    G, dirs = GATES.get(cell, 1), 2 if bidirectional else 1
    layout = []
    for layer in range(num_layers):
        for sfx in ("", "_reverse")[:dirs]:
            s = f"_l{layer}{sfx}"
            layout += [("weight_ih" + s, (G * H, D if layer == 0 else dirs * H)), ("weight_hh" + s, (G * H, H))]
            if bias:
                layout += [("bias_ih" + s, (G * H,)), ("bias_hh" + s, (G * H,))]
    return layout + [("out.weight", (O, dirs * H)), ("out.bias", (O,))]


def numpy_state_dict(cell, num_layers, bidirectional, bias, dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    return {k: rng.uniform(-0.5, 0.5, shape).astype(dtype)
            for k, shape in torch_layout(cell, num_layers, bidirectional, bias)}


def torch_state_dict(cell, num_layers, bidirectional, bias, dtype=None, seed=0):
    """state_dict() of a torch model from torch's seeded init: the recurrent module with the output
    Linear attached as its submodule ``out`` (keys weight_ih_l0, ..., out.weight, out.bias)."""
    dtype = dtype or torch.float32
    torch.manual_seed(seed)
    kw = dict(num_layers=num_layers, bidirectional=bidirectional, bias=bias, dtype=dtype)
    if cell in ("tanh", "relu"):
        rnn = torch.nn.RNN(D, H, nonlinearity=cell, **kw)
    else:
        rnn = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[cell](D, H, **kw)
    rnn.out = torch.nn.Linear((2 if bidirectional else 1) * H, O, dtype=dtype)
    return rnn.state_dict()


def as_numpy(v):
    return v.numpy() if torch is not None and isinstance(v, torch.Tensor) else v


def snapshot(sd):
    """A deep copy of a dict of arrays or tensors, to show later that the original is unchanged."""
    return {k: (v.clone() if torch is not None and isinstance(v, torch.Tensor) else copy.deepcopy(v))
            for k, v in sd.items()}


def assert_unchanged(sd, before):
    assert list(sd) == list(before), "the caller's dict gained or lost keys"
    for k, v in before.items():
        assert type(sd[k]) is type(v), f"{k}: the caller's value was replaced"
        a, b = sd[k], v
        if torch is not None and isinstance(a, torch.Tensor):
            assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), \
                f"{k}: the caller's tensor was modified"
        elif isinstance(a, np.ndarray):
            assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b, equal_nan=True), \
                f"{k}: the caller's array was modified"


def assert_same_state_dict(result, sd):
    """result (from to_torch) equals sd: same keys in the same order, NumPy arrays of equal values and dtypes."""
    assert list(result) == list(sd)
    for k, v in sd.items():
        v = as_numpy(v)
        assert isinstance(result[k], np.ndarray), f"{k}: expected a NumPy array, got {type(result[k]).__name__}"
        assert result[k].dtype == v.dtype, f"{k}: dtype {result[k].dtype}, expected {v.dtype}"
        assert result[k].shape == v.shape, f"{k}: shape {result[k].shape}, expected {v.shape}"
        assert np.array_equal(result[k], v), f"{k}: values differ"


# --- round trips --------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("structure", STRUCTURES, ids=structure_id)
@pytest.mark.parametrize("cell", ["tanh", "relu", "sigmoid", "identity", "lstm", "gru"])
def test_round_trip_numpy(cell, structure, dtype):
    num_layers, bidir, bias = structure
    sd = numpy_state_dict(cell, num_layers, bidir, bias, dtype)
    before = snapshot(sd)
    params = interop.from_torch(sd, cell=cell, num_layers=num_layers, bidirectional=bidir)
    assert_unchanged(sd, before)
    assert all(isinstance(v, np.ndarray) and v.dtype == dtype for v in params.values())
    # the result is copies: writing into it leaves the caller's arrays alone
    for v in params.values():
        v[...] = 7.0
    assert_unchanged(sd, before)
    params = interop.from_torch(sd, cell=cell, num_layers=num_layers, bidirectional=bidir)
    params_before = snapshot(params)
    result = interop.to_torch(params, cell=cell, num_layers=num_layers, bidirectional=bidir)
    assert_unchanged(params, params_before)
    assert_same_state_dict(result, sd)
    assert not any(np.shares_memory(result[k], params[ours]) for ours, k in interop.key_map(
        num_layers, bidir, bias).items()), "to_torch must return copies"


@needs_torch
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("structure", STRUCTURES, ids=structure_id)
@pytest.mark.parametrize("cell", TORCH_CELLS)
def test_round_trip_torch(cell, structure, dtype):
    num_layers, bidir, bias = structure
    sd = torch_state_dict(cell, num_layers, bidir, bias, getattr(torch, dtype))
    assert [(k, tuple(v.shape)) for k, v in sd.items()] == torch_layout(cell, num_layers, bidir, bias), \
        "this file's torch_layout no longer matches torch's state_dict"
    before = snapshot(sd)
    params = interop.from_torch(sd, cell=cell, num_layers=num_layers, bidirectional=bidir)
    assert_unchanged(sd, before)
    assert all(isinstance(v, np.ndarray) and v.dtype == np.dtype(dtype) for v in params.values())
    for v in params.values():  # copies, not views of the tensors' memory
        v[...] = 7.0
    assert_unchanged(sd, before)
    params = interop.from_torch(sd, cell=cell, num_layers=num_layers, bidirectional=bidir)
    assert_same_state_dict(interop.to_torch(params, cell=cell, num_layers=num_layers, bidirectional=bidir), sd)


def two_layer_bidirectional_keys():
    """gpubptt key -> torch key of a 2-layer bidirectional model with biases, written out here rather
    than taken from interop.key_map, which is what the tests check."""
    expected = {"Wy": "out.weight", "by": "out.bias"}
    for layer in range(2):
        for ours_sfx, torch_sfx in (("", ""), ("_reverse", "_reverse")):
            s, t = f"_l{layer}{ours_sfx}", f"_l{layer}{torch_sfx}"
            expected.update({"Wx" + s: "weight_ih" + t, "Ws" + s: "weight_hh" + t,
                             "bx" + s: "bias_ih" + t, "bs" + s: "bias_hh" + t})
    return expected


def test_key_mapping():
    """Each gpubptt key holds the torch key's array (2-layer bidirectional LSTM, every key)."""
    sd = numpy_state_dict("lstm", 2, True, True)
    params = interop.from_torch(sd, cell="lstm", num_layers=2, bidirectional=True)
    expected = two_layer_bidirectional_keys()
    assert set(params) == set(expected)
    for ours, theirs in expected.items():
        assert np.array_equal(params[ours], sd[theirs]), f"params[{ours!r}] != state_dict[{theirs!r}]"
    # one layer in one direction: our keys carry no suffix, torch's do
    sd1 = numpy_state_dict("gru", 1, False, True)
    params1 = interop.from_torch(sd1, cell="gru")
    assert list(params1) == ["Wx", "Ws", "bx", "bs", "Wy", "by"]
    assert np.array_equal(params1["Ws"], sd1["weight_hh_l0"]) and np.array_equal(params1["bx"], sd1["bias_ih_l0"])


def test_to_torch_of_grads_drops_x_and_s0():
    """to_torch(grads) of a real bptt call: torch's parameter keys only, each the gradient of its key."""
    sd = numpy_state_dict("lstm", 2, True, True, np.float64)
    params = interop.from_torch(sd, cell="lstm", num_layers=2, bidirectional=True)
    rng = np.random.default_rng(1)
    x, d = rng.standard_normal((3, 2, D)), rng.standard_normal((3, 2, O))
    _, grads = gpubptt.bptt(params, x, d, cell="lstm", backend="cpu", num_layers=2, bidirectional=True,
                            lengths=np.array([3, 2]))
    assert "x" in grads and "s0" in grads
    result = interop.to_torch(grads, cell="lstm", num_layers=2, bidirectional=True)
    assert list(result) == list(sd)
    expected = two_layer_bidirectional_keys()
    assert set(result) == set(expected.values())
    for ours, theirs in expected.items():
        assert np.array_equal(result[theirs], grads[ours]) and result[theirs].dtype == np.float64


@needs_torch
def test_from_torch_takes_named_parameters():
    """Parameters that require grad (named_parameters(), not state_dict()) read the same."""
    torch.manual_seed(0)
    rnn = torch.nn.GRU(D, H, num_layers=2)
    rnn.out = torch.nn.Linear(H, O)
    a = interop.from_torch(dict(rnn.named_parameters()), cell="gru", num_layers=2)
    b = interop.from_torch(rnn.state_dict(), cell="gru", num_layers=2)
    assert list(a) == list(b) and all(np.array_equal(a[k], b[k]) for k in a)


# --- bad input ----------------------------------------------------------------------------------------

def raises(sd, exc, *fragments, **kw):
    """from_torch(sd, **kw) raises exc with every fragment in its message; sd is left as it was."""
    before = snapshot(sd) if isinstance(sd, dict) else None
    with pytest.raises(exc) as info:
        interop.from_torch(sd, **kw)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in the message: {message}"
    if before is not None:
        assert_unchanged(sd, before)
    return message


LSTM2 = dict(cell="lstm", num_layers=2, bidirectional=True)


def lstm2_sd(torch_tensors=False):
    if torch_tensors:
        return torch_state_dict("lstm", 2, True, True)
    return numpy_state_dict("lstm", 2, True, True)


KINDS = ["numpy", pytest.param("torch", marks=needs_torch)]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("key", ["weight_hh_l1", "bias_ih_l0_reverse", "out.bias", "weight_ih_l0"])
def test_missing_key(key, kind):
    sd = lstm2_sd(kind == "torch")
    del sd[key]
    raises(sd, ValueError, "state_dict: missing key(s)", repr(key), "num_layers=2", **LSTM2)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("key", ["weight_ih_l2", "out.extra", "Wx_l0", "bias_ih_l0_forward"])
def test_extra_key(key, kind):
    sd = lstm2_sd(kind == "torch")
    sd[key] = sd["out.bias"]
    raises(sd, ValueError, "state_dict: unexpected key(s)", repr(key), **LSTM2)


def test_keys_of_another_structure():
    sd = numpy_state_dict("gru", 2, False, True)
    raises(sd, ValueError, "unexpected key(s)", "'weight_ih_l1'", "num_layers=1", cell="gru", num_layers=1)
    raises(sd, ValueError, "missing key(s)", "'weight_ih_l0_reverse'", "bidirectional=True", cell="gru",
           num_layers=2, bidirectional=True)
    # biases present for one vector of a pair only
    sd = numpy_state_dict("gru", 1, False, True)
    del sd["bias_hh_l0"]
    raises(sd, ValueError, "missing key(s) 'bias_hh_l0'", cell="gru")


def test_keys_under_a_module_prefix_get_a_hint():
    """A model's own state_dict holds the layers under its attribute names ('rnn.', 'fc.'): the error
    says which prefix to strip or rename, and doing what it says reads the same parameters."""
    sd = lstm2_sd()
    ours = interop.from_torch(sd, **LSTM2)
    prefixed = {("fc." + k[4:] if k.startswith("out.") else "rnn." + k): v for k, v in sd.items()}
    message = raises(prefixed, ValueError, "missing key(s)", "strip the prefix 'rnn.' and rename 'fc.' to 'out.'",
                     **LSTM2)
    assert "expected weight_ih_l0, weight_hh_l0, bias_ih_l0, bias_hh_l0, " in message  # the biases too
    only_rnn = {k if k.startswith("out.") else "encoder.rnn." + k: v for k, v in sd.items()}
    message = raises(only_rnn, ValueError, "strip the prefix 'encoder.rnn.')", **LSTM2)
    assert "rename" not in message
    fixed = {k.removeprefix("rnn.").replace("fc.", "out.", 1): v for k, v in prefixed.items()}
    assert all(np.array_equal(interop.from_torch(fixed, **LSTM2)[k], ours[k]) for k in ours)
    # two candidate prefixes for one key: no guess
    sd = lstm2_sd()
    ambiguous = {**{"a." + k: v for k, v in sd.items()}, **{"b." + k: v for k, v in sd.items()}}
    assert "prefix" not in raises(ambiguous, ValueError, "missing key(s)", **LSTM2)


def test_an_lstm_with_a_projection_is_named():
    sd = numpy_state_dict("lstm", 1, False, True)
    sd["weight_hr_l0"] = np.zeros((2, 4), np.float32)
    raises(sd, ValueError, "unexpected key(s) 'weight_hr_l0'", "proj_size", cell="lstm")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("key,shape,expected", [
    ("weight_hh_l1", (16, 5), "[4H,H] = (16, 4)"),
    ("weight_hh_l1_reverse", (16,), "[4H,H] = (16, 4)"),
    ("weight_ih_l1", (16, 4), "[4H,2H] = (16, 8)"),
    ("weight_ih_l0", (12, 3), "[4H,D] = (16, 3)"),
    ("bias_ih_l1_reverse", (15,), "[4H] = (16,)"),
    ("out.weight", (2, 4), "[O,2H] = (2, 8)"),
    ("out.bias", (2, 1), "[O] = (2,)"),
    # layer 0's recurrent weight is where H is read from (its width): the message still names it
    ("weight_hh_l0", (16, 5), "[4H,H] = (20, 5)"),
    ("weight_hh_l0", (4, 16), "[4H,H] = (64, 16)"),
])
def test_misshaped_key(key, shape, expected, kind):
    sd = lstm2_sd(kind == "torch")
    sd[key] = torch.zeros(shape) if kind == "torch" else np.zeros(shape, np.float32)
    raises(sd, ValueError, f"state_dict[{key!r}]", f"expected shape {expected}", f"got {shape}", **LSTM2)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("saved,cell,expected", [
    ("lstm", "gru", "[3H,H] = (12, 4)"),
    ("lstm", "tanh", "[H,H] = (4, 4)"),
    ("gru", "lstm", "[4H,H] = (16, 4)"),
    ("relu", "gru", "[3H,H] = (12, 4)"),
])
def test_wrong_cell_for_the_shapes(saved, cell, expected, kind):
    sd = torch_state_dict(saved, 1, False, True) if kind == "torch" else numpy_state_dict(saved, 1, False, True)
    got = {"lstm": "(16, 4)", "gru": "(12, 4)", "relu": "(4, 4)"}[saved]
    raises(sd, ValueError, "state_dict['weight_hh_l0']: expected shape " + expected, "got " + got,
           f"cell={cell!r}", cell=cell)


@needs_torch
def test_not_a_dict():
    torch.manual_seed(0)
    rnn = torch.nn.LSTM(D, H)
    raises(rnn, TypeError, "state_dict: expected a dict of arrays or tensors, got LSTM", cell="lstm")


@pytest.mark.parametrize("value,name", [(None, "NoneType"), ([("weight_ih_l0", np.zeros((4, 3)))], "list"),
                                        ("weights.pt", "str")])
def test_not_a_dict_numpy(value, name):
    raises(value, TypeError, f"state_dict: expected a dict of arrays or tensors, got {name}")


def test_bad_values():
    key = "'weight_hh_l1'"
    sd = lstm2_sd()
    sd["weight_hh_l1"] = sd["weight_hh_l1"].astype(np.int64)
    raises(sd, TypeError, f"state_dict[{key}]: expected dtype float32 or float64, got int64", **LSTM2)
    sd = lstm2_sd()
    sd["weight_hh_l1"] = sd["weight_hh_l1"].astype(np.float64)  # the others are float32
    raises(sd, TypeError, f"state_dict[{key}]: dtype float64 differs from the other arrays' float32", **LSTM2)
    sd = lstm2_sd()
    sd["weight_hh_l1"] = sd["weight_hh_l1"].tolist()
    raises(sd, TypeError, f"state_dict[{key}]: expected a NumPy or CuPy array or a torch tensor, got list", **LSTM2)
    sd = lstm2_sd()
    sd["weight_hh_l1"] = sd["weight_hh_l1"].copy()
    sd["weight_hh_l1"][0, 0] = np.nan
    raises(sd, ValueError, f"state_dict[{key}]: contains NaN or Inf", **LSTM2)


@needs_torch
@pytest.mark.parametrize("dtype,name", [("bfloat16", "torch.bfloat16"), ("float16", "float16"), ("int32", "int32")])
def test_bad_tensor_dtype(dtype, name):
    sd = lstm2_sd(True)
    sd["weight_hh_l1"] = sd["weight_hh_l1"].to(getattr(torch, dtype))
    raises(sd, TypeError, "state_dict['weight_hh_l1']: expected dtype float32 or float64, got " + name, **LSTM2)


@needs_torch
def test_a_tensor_without_values_is_named():
    sd = lstm2_sd(True)
    sd["weight_hh_l1"] = sd["weight_hh_l1"].to("meta")
    with pytest.raises(ValueError, match=r"state_dict\['weight_hh_l1'\]: cannot read the tensor's values "
                                         r"\(device meta\)"):
        interop.from_torch(sd, **LSTM2)


def test_bad_structure_arguments():
    sd = numpy_state_dict("lstm", 1, False, True)
    raises(sd, ValueError, "cell: expected one of", "got 'LSTM'", cell="LSTM")
    raises(sd, ValueError, "num_layers: expected a positive integer, got 0", cell="lstm", num_layers=0)
    raises(sd, TypeError, "bidirectional: expected True or False, got 'yes'", cell="lstm", bidirectional="yes")
    for kw, error, match in ((dict(num_layers=0), ValueError, "num_layers: expected a positive integer, got 0"),
                             (dict(num_layers=2.0), ValueError, "num_layers: expected a positive integer, got 2.0"),
                             (dict(bidirectional=1), TypeError, "bidirectional: expected True or False, got 1"),
                             (dict(bias="no"), TypeError, "bias: expected True or False, got 'no'")):
        with pytest.raises(error, match=match):
            interop.key_map(**kw)


def test_to_torch_bad_input():
    params = interop.from_torch(numpy_state_dict("lstm", 2, False, True), cell="lstm", num_layers=2)
    with pytest.raises(TypeError, match=r"params_or_grads: expected a dict of arrays, got list"):
        interop.to_torch(list(params.values()), cell="lstm", num_layers=2)
    missing = {k: v for k, v in params.items() if k != "Ws_l1"}
    with pytest.raises(ValueError, match=r"^params_or_grads: missing key\(s\) 'Ws_l1'"):
        interop.to_torch(missing, cell="lstm", num_layers=2)
    with pytest.raises(ValueError, match=r"^params_or_grads: unknown key\(s\) 'Wx_l2'"):
        interop.to_torch({**params, "Wx_l2": params["Wx_l1"]}, cell="lstm", num_layers=2)
    with pytest.raises(ValueError, match=r"^params_or_grads\['Ws_l0'\]: expected shape \[3H,H\] = \(12, 4\)"):
        interop.to_torch(params, cell="gru", num_layers=2)
