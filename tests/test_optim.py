"""Optimizers: the reference formulas against hand-computed steps and against torch.optim; the fused
cpu kernels against the reference; clipping fused into the step; the NaN/Inf guard; state_dict;
bad input."""
import numpy as np
import pytest

from gpubptt import optim

from conftest import assert_close

# float64: the kernels and torch apply the same operations, in another association in places
# (~1e-16 per step); float32: ~6e-8 per operation over a few steps, 1e-5 relative leaves margin.
TOL = {np.float64: 1e-12, np.float32: 1e-5}

CONFIGS = [  # (name, our options, torch options)
    ("sgd", dict(lr=0.1), dict(lr=0.1)),
    ("sgd", dict(lr=0.05, momentum=0.9, dampening=0.1, weight_decay=0.01),
     dict(lr=0.05, momentum=0.9, dampening=0.1, weight_decay=0.01)),
    ("sgd", dict(lr=0.05, momentum=0.9, nesterov=True), dict(lr=0.05, momentum=0.9, nesterov=True)),
    ("adam", dict(lr=0.01), dict(lr=0.01)),
    ("adam", dict(lr=0.02, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1),
     dict(lr=0.02, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1)),
    ("adagrad", dict(lr=0.1), dict(lr=0.1)),
    ("adagrad", dict(lr=0.1, lr_decay=0.05, weight_decay=0.01, initial_accumulator_value=0.1),
     dict(lr=0.1, lr_decay=0.05, weight_decay=0.01, initial_accumulator_value=0.1)),
]
IDS = [f"{c[0]}-{i}" for i, c in enumerate(CONFIGS)]


def problem(dtype, steps=4, seed=0):
    rng = np.random.default_rng(seed)
    params = {"W": rng.standard_normal((3, 4)).astype(dtype), "b": rng.standard_normal(3).astype(dtype)}
    grads = [{k: rng.standard_normal(v.shape).astype(dtype) for k, v in params.items()} for _ in range(steps)]
    return params, grads


def run(name, options, params, grads, backend, **step_options):
    p = {k: v.copy() for k, v in params.items()}
    opt = optim.make_optimizer(name, p, backend=backend, **options)
    for g in grads:
        opt.step(g, **step_options)
    return p, opt


def test_sgd_momentum_by_hand():
    p = {"w": np.array([1.0])}
    opt = optim.SGD(p, lr=0.5, momentum=0.9, backend="reference")
    opt.step({"w": np.array([2.0])})  # buf = 2; p = 1 - 0.5*2 = 0
    assert p["w"][0] == 0.0
    opt.step({"w": np.array([1.0])})  # buf = 0.9*2 + 1 = 2.8; p = 0 - 1.4
    assert p["w"][0] == pytest.approx(-1.4, abs=1e-15)


def test_sgd_nesterov_by_hand():
    p = {"w": np.array([1.0])}
    opt = optim.SGD(p, lr=0.5, momentum=0.9, nesterov=True, backend="reference")
    opt.step({"w": np.array([2.0])})  # buf = 2; step g + 0.9 buf = 3.8; p = 1 - 1.9
    assert p["w"][0] == pytest.approx(-0.9, abs=1e-15)


def test_adam_first_steps_by_hand():
    p = {"w": np.array([1.0, -1.0])}
    opt = optim.Adam(p, lr=0.1, backend="reference")
    opt.step({"w": np.array([4.0, -0.5])})  # m_hat = g, v_hat = g²: p -= lr g/(|g| + eps)
    np.testing.assert_allclose(p["w"], [1.0 - 0.1 * 4 / (4 + 1e-8), -1.0 + 0.1 * 0.5 / (0.5 + 1e-8)], rtol=1e-14)
    opt.step({"w": np.array([2.0, 0.0])})
    m = 0.9 * 0.1 * np.array([4.0, -0.5]) + 0.1 * np.array([2.0, 0.0])
    v = 0.999 * 0.001 * np.array([16.0, 0.25]) + 0.001 * np.array([4.0, 0.0])
    step = 0.1 * (m / (1 - 0.9 ** 2)) / (np.sqrt(v / (1 - 0.999 ** 2)) + 1e-8)
    np.testing.assert_allclose(p["w"], [1.0 - 0.1 * 4 / (4 + 1e-8) - step[0], -1.0 + 0.1 * 0.5 / (0.5 + 1e-8) - step[1]],
                               rtol=1e-14)


def test_adagrad_by_hand():
    p = {"w": np.array([1.0])}
    opt = optim.Adagrad(p, lr=0.1, lr_decay=0.5, backend="reference")
    opt.step({"w": np.array([3.0])})  # s = 9; p = 1 - 0.1*3/3
    opt.step({"w": np.array([4.0])})  # s = 25; lr_t = 0.1/1.5; p -= lr_t*4/5
    assert p["w"][0] == pytest.approx(0.9 - 0.1 / 1.5 * 0.8, rel=1e-9)  # eps = 1e-10 in the denominators


@pytest.mark.parametrize("name,options,torch_options", CONFIGS, ids=IDS)
def test_reference_matches_torch_optim(name, options, torch_options):
    torch = pytest.importorskip("torch", reason="torch is not installed: the torch.optim comparison needs it")
    params, grads = problem(np.float64, steps=5)
    ours, _ = run(name, options, params, grads, "reference")
    tensors = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    cls = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adagrad": torch.optim.Adagrad}[name]
    opt = cls(list(tensors.values()), foreach=False, **torch_options)
    for g in grads:
        for k, t in tensors.items():
            t.grad = torch.tensor(g[k])
        opt.step()
    for k, t in tensors.items():
        assert_close(ours[k], t.detach().numpy(), TOL[np.float64], f"{name} {k}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name,options,torch_options", CONFIGS, ids=IDS)
def test_cpu_kernels_match_reference(name, options, torch_options, dtype):
    params, grads = problem(dtype)
    ref, ref_opt = run(name, options, params, grads, "reference")
    cpu, cpu_opt = run(name, options, params, grads, "cpu")
    for k in params:
        assert cpu[k].dtype == dtype
        assert_close(cpu[k], ref[k], TOL[dtype], f"{name} {k}")
    ref_state, cpu_state = ref_opt.state_dict(), cpu_opt.state_dict()
    assert cpu_state["steps"] == ref_state["steps"] == len(grads)
    for b in ref_state["buffers"]:
        for k in params:
            assert_close(cpu_state["buffers"][b][k], ref_state["buffers"][b][k], TOL[dtype], f"{name} {b} {k}")


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("clip", [dict(clip_norm=0.5), dict(clip_value=0.3), dict(clip_norm=0.4, clip_value=0.3)])
def test_clipping_fused_into_the_step(backend, clip):
    """A step with clipping equals clipping the gradients by formula, then a step without."""
    params, grads = problem(np.float64, steps=3)
    fused, _ = run("adam", dict(lr=0.01), params, grads, backend, **clip)
    clipped = []
    for g in grads:
        g = {k: np.clip(v, -clip["clip_value"], clip["clip_value"]) if "clip_value" in clip else v.copy()
             for k, v in g.items()}
        norm = np.sqrt(sum(np.sum(v * v) for v in g.values()))
        if "clip_norm" in clip and norm > clip["clip_norm"]:
            g = {k: v * (clip["clip_norm"] / norm) for k, v in g.items()}
        clipped.append(g)
    plain, _ = run("adam", dict(lr=0.01), params, clipped, "reference")
    for k in params:
        assert_close(fused[k], plain[k], TOL[np.float64], k)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("name", optim.OPTIMIZERS)
def test_lr_set_between_steps_is_the_next_steps(backend, name):
    """A schedule: opt.lr = ... between steps scales the next update (each rule's step is proportional
    to lr at default options), the state kept."""
    params, grads = problem(np.float64, steps=2)
    runs = []
    for lr in (0.1, 0.02):
        p = {k: v.copy() for k, v in params.items()}
        opt = optim.make_optimizer(name, p, 0.1, backend=backend)
        opt.step(grads[0])
        after_first = {k: v.copy() for k, v in p.items()}
        opt.lr = lr
        opt.step(grads[1])
        runs.append({k: p[k] - after_first[k] for k in p})
        assert opt.lr == lr and opt.state_dict()["hyper"]["lr"] == lr
    for k in params:
        np.testing.assert_allclose(runs[1][k], 0.2 * runs[0][k], rtol=1e-12, atol=1e-15)
    with pytest.raises(ValueError, match=r"lr: expected a finite number > 0, got 0.0"):
        opt.lr = 0
    again = optim.make_optimizer(name, {k: v.copy() for k, v in params.items()}, 0.5, backend=backend)
    again.load_state_dict(opt.state_dict())  # the scheduled lr travels with the state, as in torch.optim
    assert again.lr == 0.02


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_step_reports_the_norm_and_leaves_grads_alone(backend):
    params, grads = problem(np.float32, steps=1)
    before = {k: v.copy() for k, v in grads[0].items()}
    opt = optim.SGD({k: v.copy() for k, v in params.items()}, lr=0.1, backend=backend)
    info = opt.step(grads[0], clip_norm=0.1)
    norm = np.sqrt(sum(np.sum(np.asarray(v, np.float64) ** 2) for v in before.values()))
    assert_close(info.norm, norm, 1e-6, "norm")
    assert bool(info.applied)
    for k in before:
        np.testing.assert_array_equal(grads[0][k], before[k])


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("name", optim.OPTIMIZERS)
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_guard_skips_the_step(backend, name, bad):
    params, grads = problem(np.float32, steps=2)
    p = {k: v.copy() for k, v in params.items()}
    opt = optim.make_optimizer(name, p, backend=backend, **({"momentum": 0.9} if name == "sgd" else {}))
    poisoned = {k: v.copy() for k, v in grads[0].items()}
    poisoned["b"][1] = bad
    state_before = opt.state_dict()
    info = opt.step(poisoned, clip_norm=1.0)
    assert not bool(info.applied) and not np.isfinite(info.norm)
    for k in params:
        np.testing.assert_array_equal(p[k], params[k], err_msg=f"{k} changed by a skipped step")
    state = opt.state_dict()
    assert (state["steps"], state["skipped"]) == (0, 1)
    for b in state["buffers"]:
        for k in params:
            np.testing.assert_array_equal(state["buffers"][b][k], state_before["buffers"][b][k])
    # the next finite step is step t = 1 (bias correction, first momentum step), as if none was skipped
    info = opt.step(grads[1])
    assert bool(info.applied) and (opt.steps, opt.skipped) == (1, 1)
    fresh, _ = run(name, {"momentum": 0.9} if name == "sgd" else {}, params, [grads[1]], backend)
    for k in params:
        np.testing.assert_array_equal(p[k], fresh[k])


@pytest.mark.parametrize("name", optim.OPTIMIZERS)
def test_state_dict_round_trip_continues_identically(name):
    params, grads = problem(np.float32, steps=4)
    straight, _ = run(name, {}, params, grads, "cpu")
    p = {k: v.copy() for k, v in params.items()}
    first = optim.make_optimizer(name, p, backend="cpu")
    for g in grads[:2]:
        first.step(g)
    saved = first.state_dict()
    second = optim.make_optimizer(name, p, backend="cpu")
    second.load_state_dict(saved)
    for g in grads[2:]:
        second.step(g)
    for k in params:
        np.testing.assert_array_equal(p[k], straight[k])


def test_load_state_dict_rejects_a_mismatch_and_changes_nothing():
    params, grads = problem(np.float32, steps=1)
    opt = optim.Adam({k: v.copy() for k, v in params.items()}, backend="cpu")
    opt.step(grads[0])
    good = opt.state_dict()
    with pytest.raises(ValueError, match="state: saved by optimizer 'sgd', this is 'adam'"):
        opt.load_state_dict({**good, "optimizer": "sgd"})
    bad = {**good, "buffers": {b: dict(v) for b, v in good["buffers"].items()}}
    bad_values = {**good, "buffers": {b: dict(v) for b, v in good["buffers"].items()}}
    bad_values["buffers"]["exp_avg"]["W"] = np.full_like(good["buffers"]["exp_avg"]["W"], 7.0)
    bad["buffers"]["exp_avg"]["W"] = np.zeros((4, 3), np.float32)
    with pytest.raises(ValueError, match=r"state\['buffers'\]\['exp_avg'\]\['W'\]: expected shape .*got \(4, 3\)"):
        opt.load_state_dict(bad)
    for steps in (-1, 2 ** 70):  # 2**70 does not fit the int64 counter: refused before the buffers change
        with pytest.raises(ValueError, match=rf"state\['steps'\]: expected a non-negative 64-bit integer, got {steps}"):
            opt.load_state_dict({**bad_values, "steps": steps})
    after = opt.state_dict()
    assert after["steps"] == 1
    for k in params:
        np.testing.assert_array_equal(after["buffers"]["exp_avg"][k], good["buffers"]["exp_avg"][k])


def adam_state_with(change):
    """An Adam optimizer after one step, the state it gives with exp_avg['W'] set to 7 (a valid change,
    which a load that is not atomic would leave behind) and then ``change(state)`` applied."""
    params, grads = problem(np.float32, steps=1)
    opt = optim.Adam({k: v.copy() for k, v in params.items()}, backend="cpu")
    opt.step(grads[0])
    state = opt.state_dict()
    state["buffers"]["exp_avg"]["W"][...] = 7.0
    change(state)
    return opt, state


def set_entry(buffer, key, index, value):
    def change(state):
        state["buffers"][buffer][key][index] = value
    return change


def obj_array(state):
    a = state["buffers"]["exp_avg_sq"]["b"].astype(object)
    a[0] = "x"
    state["buffers"]["exp_avg_sq"]["b"] = a


@pytest.mark.parametrize("change,error,match", [
    (set_entry("exp_avg_sq", "W", (0, 0), -1.0), ValueError,
     r"state\['buffers'\]\['exp_avg_sq'\]\['W'\]: expected non-negative values \(a sum of squares\), got a minimum "
     r"of -1.0"),
    (set_entry("exp_avg_sq", "b", 1, np.nan), ValueError, r"state\['buffers'\]\['exp_avg_sq'\]\['b'\]: contains NaN"),
    (set_entry("exp_avg_sq", "W", (1, 2), np.inf), ValueError,
     r"state\['buffers'\]\['exp_avg_sq'\]\['W'\]: contains NaN or Inf"),
    (lambda s: s.update(hyper=None), TypeError, r"state\['hyper'\]: expected a dict of hyperparameters, got NoneType"),
    (lambda s: s.update(buffers=None), TypeError, r"state\['buffers'\]: expected a dict .*got NoneType"),
    (lambda s: s.update(buffers=["exp_avg", "exp_avg_sq"]), TypeError, r"state\['buffers'\]: expected a dict .*got list"),
    (lambda s: s["buffers"].update(exp_avg_sq=None), TypeError,
     r"state\['buffers'\]\['exp_avg_sq'\]: expected a dict .*got NoneType"),
    (obj_array, TypeError, r"state\['buffers'\]\['exp_avg_sq'\]\['b'\]: expected dtype float32 or float64, got object"),
    (lambda s: s["buffers"]["exp_avg_sq"].update(b=[0.0, 0.0, 0.0]), TypeError,
     r"state\['buffers'\]\['exp_avg_sq'\]\['b'\]: expected a NumPy or CuPy array, got list"),
    (lambda s: s["buffers"]["exp_avg_sq"].update(b=np.full(3, 1e300)), ValueError,  # finite, but not as float32
     r"state\['buffers'\]\['exp_avg_sq'\]\['b'\]: holds values beyond the range of float32"),
], ids=["negative", "nan", "inf", "hyper-None", "buffers-None", "buffers-list", "buffer-None", "object-array",
        "a-list", "past-float32"])
def test_load_state_dict_checks_the_values_and_changes_nothing(change, error, match):
    opt, bad = adam_state_with(change)
    good = opt.state_dict()
    with pytest.raises(error, match=match):
        opt.load_state_dict(bad)
    after = opt.state_dict()
    assert (after["steps"], after["skipped"], after["hyper"]) == (good["steps"], good["skipped"], good["hyper"])
    for b in good["buffers"]:
        for k in good["buffers"][b]:
            np.testing.assert_array_equal(after["buffers"][b][k], good["buffers"][b][k], err_msg=f"{b} {k}")


def test_load_state_dict_refuses_a_negative_adagrad_sum():
    params, grads = problem(np.float64, steps=1)
    opt = optim.Adagrad({k: v.copy() for k, v in params.items()}, backend="cpu")
    state = opt.state_dict()
    state["buffers"]["sum"]["b"][2] = -0.5
    with pytest.raises(ValueError, match=r"state\['buffers'\]\['sum'\]\['b'\]: expected non-negative values"):
        opt.load_state_dict(state)
    assert (opt.state_dict()["buffers"]["sum"]["b"] == 0).all()


def test_load_state_dict_converts_the_other_float_dtype():
    params, grads = problem(np.float64, steps=1)
    wide = optim.Adam({k: v.copy() for k, v in params.items()}, backend="cpu")
    wide.step(grads[0])
    narrow = optim.Adam({k: v.astype(np.float32) for k, v in params.items()}, backend="cpu")
    narrow.load_state_dict(wide.state_dict())
    for b, values in wide.state_dict()["buffers"].items():
        for k, v in values.items():
            assert narrow.state[b][k].dtype == np.float32
            np.testing.assert_allclose(narrow.state[b][k], v, rtol=1e-7)


@pytest.mark.parametrize("make,error,match", [
    (lambda p: optim.SGD(p, lr=0), ValueError, r"lr: expected a finite number > 0, got 0.0"),
    (lambda p: optim.SGD(p, lr=-0.1), ValueError, r"lr: expected a finite number > 0, got -0.1"),
    (lambda p: optim.Adam(p, lr=np.nan), ValueError, r"lr: expected a finite number > 0, got nan"),
    (lambda p: optim.SGD(p, lr="0.1"), TypeError, r"lr: expected a number, got '0.1'"),
    (lambda p: optim.SGD(p, lr=0.1, momentum=-1), ValueError, r"momentum: expected a finite number >= 0"),
    (lambda p: optim.SGD(p, lr=0.1, nesterov=True), ValueError, r"nesterov: needs momentum > 0 and dampening = 0"),
    (lambda p: optim.SGD(p, lr=0.1, nesterov=1), TypeError, r"nesterov: expected True or False, got 1"),
    (lambda p: optim.Adam(p, betas=(0.9, 1.0)), ValueError, r"betas\[1\]: expected a finite number >= 0 and < 1"),
    (lambda p: optim.Adam(p, betas=0.9), TypeError, r"betas: expected a pair"),
    (lambda p: optim.Adam(p, eps=0), ValueError, r"eps: expected a finite number > 0, got 0.0"),
    (lambda p: optim.Adagrad(p, lr_decay=-1), ValueError, r"lr_decay: expected a finite number >= 0"),
    (lambda p: optim.make_optimizer("rmsprop", p), ValueError,
     r"optimizer: expected one of 'sgd', 'adam', 'adagrad', got 'rmsprop'"),
    (lambda p: optim.make_optimizer("adam", p, momentum=0.9), ValueError,
     r"optimizer_options: optimizer='adam' takes betas, eps, weight_decay; got 'momentum'"),
    (lambda p: optim.Adam([p["W"]]), TypeError, r"params: expected a dict of arrays, got list"),
    (lambda p: optim.Adam({"W": p["W"].T}), ValueError, r"params\['W'\]: expected a C-contiguous array"),
    (lambda p: optim.Adam({"W": p["W"], "b": p["b"].astype(np.float64)}), TypeError,
     r"params\['b'\]: dtype float64 differs from the other arrays' float32"),
    (lambda p: optim.Adam(p, backend="gpu"), ValueError, r"backend: expected one of"),
    (lambda p: optim.Adam({**p, "b": np.frombuffer(p["b"].tobytes(), np.float32)}), ValueError,
     r"params\['b'\]: expected a writable array \(it is updated in place\), got a read-only one"),
    (lambda p: optim.SGD({"W": p["W"], "V": p["W"]}, lr=0.1), ValueError,
     r"params\['W'\] and params\['V'\]: expected separate arrays .*share memory"),
    (lambda p: optim.Adam({"W": p["W"], "row": p["W"][1]}), ValueError,
     r"params\['W'\] and params\['row'\]: expected separate arrays .*share memory"),
])
def test_bad_optimizer_arguments(make, error, match):
    params, _ = problem(np.float32)
    with pytest.raises(error, match=match):
        make(params)


def test_bad_step_arguments_change_nothing():
    params, grads = problem(np.float32, steps=1)
    p = {k: v.copy() for k, v in params.items()}
    opt = optim.Adam(p, backend="cpu")
    g = grads[0]
    with pytest.raises(ValueError, match=r"grads: expected the keys of params \('W', 'b'\); missing 'b'"):
        opt.step({"W": g["W"]})
    with pytest.raises(ValueError, match=r"grads: .*unknown 'V'"):
        opt.step({**g, "V": g["W"]})
    with pytest.raises(ValueError, match=r"grads\['W'\]: expected shape .* got \(4, 3\)"):
        opt.step({**g, "W": g["W"].T.copy()})
    with pytest.raises(TypeError, match=r"grads\['W'\]: dtype float64 differs from the other arrays' float32"):
        opt.step({**g, "W": g["W"].astype(np.float64)})
    with pytest.raises(ValueError, match=r"clip_norm: expected a positive finite number, got -1"):
        opt.step(g, clip_norm=-1)
    with pytest.raises(ValueError, match=r"clip_value: expected a positive finite number, got 0"):
        opt.step(g, clip_value=0)
    assert opt.steps == 0 and opt.skipped == 0
    for k in params:
        np.testing.assert_array_equal(p[k], params[k])
