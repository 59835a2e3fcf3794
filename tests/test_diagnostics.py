"""gpubptt.diagnostics: the article's sum for dE_N term by term, its norms, rates and radii, and the
``gpubptt diagnose`` command."""
import math
import os
import re
import warnings

import numpy as np
import pytest

import gpubptt
from gpubptt.cli import main
from gpubptt.diagnostics import contributions, fit_rate, plot_profile, spectral_radius, with_spectral_radius
from gpubptt.selfcheck import TOLERANCE

from conftest import assert_close, make_problem

CELLS = ("tanh", "relu", "sigmoid", "identity", "lstm", "gru")
WEIGHTS = ("Wx", "Ws", "bx", "bs")


def e_n_gradient(params, x, d, s0, N, cell, **kw):
    """The gradient of E_N alone from bptt: the sequence cut at N, its last step in the loss."""
    return gpubptt.bptt(params, x[:N], d[:N], s0, cell, loss_steps="last", backend="reference", **kw)[1]


# (output_activation, loss, num_layers, bias): the article's setup, softmax/cross-entropy, a stack
SETUPS = [("identity", "squared", 1, True), ("softmax", "cross_entropy", 1, True), ("tanh", "squared", 2, False)]


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("out,loss,num_layers,bias", SETUPS)
def test_summands_add_up_to_the_bptt_gradient_of_e_n(backend, cell, out, loss, num_layers, bias):
    T, N = 6, 4  # steps after N exist and must not count
    params, x, s0, d = make_problem(T, 3, 2, 4, 3, loss=loss, seed=1, bias=bias, cell=cell, num_layers=num_layers)
    kw = dict(output_activation=out, loss=loss, num_layers=num_layers)
    r = contributions(params, x, d, step=N, s0=s0, cell=cell, backend=backend, **kw)
    g = e_n_gradient(params, x, d, s0, N, cell, **kw)
    sfx = "_l1" if num_layers == 2 else ""
    assert r.keys == {k: k + sfx for k in WEIGHTS}
    assert r.step == N and r.dWs.shape == (N,) + params["Ws" + sfx].shape
    assert r.dWx.shape == (N,) + params["Wx" + sfx].shape
    for k in WEIGHTS:
        summands = getattr(r, "d" + k)
        if not bias and k[0] == "b":
            assert summands is None
            continue
        # float64 throughout; the sums differ from bptt's only in the order of additions (TOLERANCE)
        assert_close(summands.sum(axis=0), g[k + sfx], TOLERANCE["float64"], f"Σ_i summands of dE_N/d{k}")


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_reference_jacobian_products_equal_the_engines_summands(cell, dtype):
    params, x, s0, d = make_problem(5, 3, 2, 4, 2, dtype=dtype, seed=2, cell=cell)
    ref = contributions(params, x, d, s0=s0, cell=cell, backend="reference")
    cpu = contributions(params, x, d, s0=s0, cell=cell, backend="cpu")
    tol = TOLERANCE[np.dtype(dtype).name]  # the cpu backend in dtype against float64 loops cast to dtype
    for k in WEIGHTS:
        a, b = getattr(cpu, "d" + k), getattr(ref, "d" + k)
        assert a.dtype == b.dtype == dtype
        for i in range(5):  # step by step: each summand on its own, not only their sum
            assert_close(a[i], b[i], tol, f"step {i + 1}'s summand of dE_N/d{k}", atol=tol * np.abs(b).max())
    assert ref.dS_norm.dtype == cpu.dS_norm.dtype == np.float64
    assert_close(cpu.dS_norm, ref.dS_norm, tol, "‖dE_N/dS_i‖")
    if cell == "lstm":
        assert_close(cpu.dc_norm, ref.dc_norm, tol, "‖dE_N/dc_i‖")
    else:
        assert cpu.dc_norm is None and ref.dc_norm is None


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("cell", CELLS)
def test_state_gradient_norms_equal_bptt_from_that_state_on(backend, cell):
    """dE_N/dS_i is dL/ds0 of bptt over steps i+1..N started from S_i: an independent route."""
    T, B, N = 5, 2, 5
    params, x, s0, d = make_problem(T, B, 2, 3, 2, seed=4, cell=cell)
    r = contributions(params, x, d, s0=s0, cell=cell, backend=backend)
    Y, S, *C = gpubptt.forward(params, x, s0, cell, backend="reference", return_cells=cell == "lstm")
    for i in range(1, N):
        state = (S[i - 1], C[0][i - 1]) if cell == "lstm" else S[i - 1]
        ds = gpubptt.bptt(params, x[i:N], d[i:N], state, cell, loss_steps="last", backend="reference")[1]["s0"]
        dh = ds[0] if cell == "lstm" else ds
        assert_close(r.dS_norm[i - 1], np.linalg.norm(dh), TOLERANCE["float64"], f"‖dE_N/dS_{i}‖")
        if cell == "lstm":  # total gradient of c_i: through c_{i+1} (ds[1]) and through h_i = o_i tanh(c_i)
            h, c = state
            o = h / np.tanh(c)
            dc = ds[1] + dh * o * (1 - np.tanh(c) ** 2)
            assert_close(r.dc_norm[i - 1], np.linalg.norm(dc), TOLERANCE["float64"], f"‖dE_N/dc_{i}‖")


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("a", [0.5, 0.9, 1.25])
def test_linear_rnn_with_ws_a_times_identity_decays_exactly_as_a_to_the_n_minus_i(backend, a):
    T, B, H, N = 12, 3, 4, 12
    params, x, s0, d = make_problem(T, B, 2, H, 2, seed=5, cell="identity")
    params["Ws"] = a * np.eye(H)
    r = contributions(params, x, d, s0=s0, cell="identity", backend=backend)
    expected = r.dS_norm[N - 1] * a ** np.arange(N - 1, -1, -1.0)  # dE_N/dS_i = dE_N/dS_N (a I)^(N-i)
    assert_close(r.dS_norm, expected, 1e-12, "‖dE_N/dS_i‖ against a^(N-i)")  # float64, N products of a
    assert r.rate == pytest.approx(a, rel=1e-12)
    assert fit_rate(r.dS_norm)[1:] == (pytest.approx(r.dS_norm[N - 1], rel=1e-11), N)
    assert r.spectral_radius == pytest.approx(a, rel=1e-12)
    assert r.rate_c is None


def test_steps_where_the_gradient_vanished_exactly_are_left_out_of_the_fit():
    """A ReLU RNN whose units all switch off at step k: dE_N/dS_i = 0 for every i < k."""
    T, B, H, k = 10, 2, 3, 4
    params = gpubptt.init_params(1, H, 1, dtype=np.float64, seed=0, cell="relu")
    params.update(Wx=np.ones((H, 1)), Ws=0.5 * np.eye(H), bx=np.zeros(H), bs=np.zeros(H))
    x = np.ones((T, B, 1))
    x[k - 1] = -100.0  # step k's pre-activation is below 0: S_k = 0 and g1'(.) = 0 there
    d = np.zeros((T, B, 1))
    for backend in ("reference", "cpu"):
        r = contributions(params, x, d, cell="relu", backend=backend)
        assert np.all(r.dS_norm[:k - 1] == 0) and np.all(r.dS_norm[k - 1:] > 0)
        rate, _, used = fit_rate(r.dS_norm)
        assert used == T - k + 1 and rate == pytest.approx(0.5, rel=1e-12)  # the units left on are linear
        assert r.rate == rate


def test_fit_rate_edge_cases():
    assert fit_rate(np.array([0.0, 0.0, 0.25, 0.5, 1.0])) == (pytest.approx(0.5), pytest.approx(1.0), 3)
    assert fit_rate(np.array([8.0, 4.0]))[:2] == (pytest.approx(2.0), pytest.approx(4.0))  # i = 1 is 1 step back
    for norms in (np.zeros(4), np.array([0.0, 0.0, 3.0]), np.array([2.0]), np.array([np.inf, np.nan, 1.0])):
        rate, scale, used = fit_rate(norms)
        assert math.isnan(rate) and math.isnan(scale) and used == int((np.isfinite(norms) & (norms > 0)).sum())


def test_norms_that_overflowed_are_left_out_of_the_fit():
    """An exploding gradient: far enough back the float32 norms overflow to Inf; the fit reads the rest."""
    T, H = 100, 8
    params = with_spectral_radius(gpubptt.init_params(2, H, 1, dtype=np.float32, seed=0, cell="identity",
                                                      bias=False), 3.0, "identity")
    r = contributions(params, np.zeros((T, 2, 2), np.float32), np.ones((T, 2, 1), np.float32), cell="identity",
                      backend="cpu")
    finite = int(np.isfinite(r.dS_norm).sum())
    assert 2 <= finite < T  # the case this test is about
    rate, _, used = fit_rate(r.dS_norm)
    assert used == finite and rate == pytest.approx(3.0, rel=0.05) and r.rate == rate


def test_spectral_radius_per_gate_block_and_rescaling():
    H = 3
    turn = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.5]])  # eigenvalues ±i and 0.5
    blocks = [0.3 * turn, np.diag([0.9, -0.95, 0.1]), 2.0 * np.eye(H), np.triu(np.ones((H, H))) * 0.7]
    Ws = np.concatenate(blocks)
    assert spectral_radius(Ws, "lstm") == pytest.approx({"i": 0.3, "f": 0.95, "g": 2.0, "o": 0.7})
    assert spectral_radius(0.3 * turn, "tanh") == pytest.approx(0.3)
    params = gpubptt.init_params(2, H, 1, dtype=np.float64, seed=0, cell="lstm", num_layers=2)
    before = {k: v.copy() for k, v in params.items()}
    scaled = with_spectral_radius(params, 1.5, "lstm")
    for key in ("Ws_l0", "Ws_l1"):
        assert spectral_radius(scaled[key], "lstm") == pytest.approx(dict.fromkeys("ifgo", 1.5))
    assert all(np.array_equal(params[k], before[k]) for k in params)  # the caller's arrays are untouched
    assert scaled["Wx_l0"] is params["Wx_l0"]
    with pytest.raises(ValueError, match=r"radius: expected a positive number, got -1"):
        with_spectral_radius(params, -1, "lstm")
    zero = dict(params, Ws_l1=params["Ws_l1"].copy())
    zero["Ws_l1"][6:9] = 0  # the g gate's block
    with pytest.raises(ValueError, match=r"^params\['Ws_l1'\]: a gate block has spectral radius 0 \(a zero or "
                                         r"nilpotent block\), which no scaling brings to 1.5$"):
        with_spectral_radius(zero, 1.5, "lstm")
    # a gated Ws taken for an Elman one (the default cell) would be read as its first gate block alone
    with pytest.raises(ValueError, match=r"^Ws: expected shape \[H,H\] = \(3, 3\) \(H = its width\) for cell='tanh', "
                                         r"got \(12, 3\): \[4H,H\] is the weight of cell='lstm'$"):
        spectral_radius(params["Ws_l0"])
    with pytest.raises(ValueError, match=r"^params\['Ws_l0'\]: expected shape \[3H,H\] = \(9, 3\) .* for cell='gru'"):
        with_spectral_radius(params, 1.5, "gru")
    with pytest.raises(ValueError, match=r"^cell: expected one of .* got 'LSTM'$"):
        spectral_radius(params["Ws_l0"], "LSTM")


@pytest.mark.parametrize("Ws,error,match", [
    (np.eye(3) * 1j, TypeError, r"^Ws: expected dtype float32 or float64, got complex128$"),
    (np.array([["a", "b"], ["c", "d"]]), TypeError, r"^Ws: expected dtype float32 or float64, got <U1$"),
    (np.full((2, 2), np.nan), ValueError, r"^Ws: contains NaN or Inf$"),
    (np.array([[np.inf, 0.0], [0.0, 1.0]], np.float32), ValueError, r"^Ws: contains NaN or Inf$"),
    (np.zeros((0, 0)), ValueError, r"^Ws: expected H of at least 1, got shape \(0, 0\)$"),
])
def test_spectral_radius_refuses_what_has_no_eigenvalues(Ws, error, match):
    with pytest.raises(error, match=match):
        spectral_radius(Ws)


@pytest.mark.parametrize("norms,error,match", [
    (None, TypeError, r"^norms: expected a NumPy or CuPy array, got NoneType$"),
    (5.0, TypeError, r"^norms: expected a NumPy or CuPy array, got float$"),
    ("abc", TypeError, r"^norms: expected a NumPy or CuPy array, got str$"),
    ([1.0, 0.5], TypeError, r"^norms: expected a NumPy or CuPy array, got list$"),
    (np.array([1 + 1j, 2.0]), TypeError, r"^norms: expected dtype float32 or float64, got complex128$"),
    (np.ones((2, 2)), ValueError, r"^norms: expected shape \[N\] = \(\*,\), got \(2, 2\)$"),
])
def test_fit_rate_bad_input(norms, error, match):
    with pytest.raises(error, match=match):
        fit_rate(norms)


def _with(params, **arrays):
    return {**params, **arrays}


@pytest.mark.parametrize("make,error,match", [
    (lambda p: list(p), TypeError, r"^params: expected a dict of arrays, got list$"),
    (lambda p: None, TypeError, r"^params: expected a dict of arrays, got NoneType$"),
    (lambda p: {**p, 1: np.eye(3)}, ValueError, r"^params: unknown key\(s\) 1; for cell='tanh'"),
    (lambda p: {}, ValueError, r"^params: missing key\(s\) 'Wx', 'Ws', 'Wy', 'by'; "),
    (lambda p: {**p, "Ws": np.eye(3, dtype=int)}, TypeError,
     r"^params\['Ws'\]: expected dtype float32 or float64, got int64$"),
    (lambda p: {**p, "Ws": np.full((3, 3), np.nan)}, ValueError, r"^params\['Ws'\]: contains NaN or Inf$"),
])
def test_with_spectral_radius_validates_params(make, error, match):
    params = make(gpubptt.init_params(2, 3, 1, dtype=np.float64, seed=0))
    with pytest.raises(error, match=match):
        with_spectral_radius(params, 2.0)


def test_with_spectral_radius_reads_the_layers_and_directions_from_the_keys():
    params = gpubptt.init_params(2, 3, 1, dtype=np.float64, seed=0, cell="gru", num_layers=2, bidirectional=True)
    scaled = with_spectral_radius(params, 0.5, "gru")
    for key in ("Ws_l0", "Ws_l0_reverse", "Ws_l1", "Ws_l1_reverse"):
        assert spectral_radius(scaled[key], "gru") == pytest.approx(dict.fromkeys("rzn", 0.5))
    del params["Ws_l1_reverse"]
    with pytest.raises(ValueError, match=r"^params: missing key\(s\) 'Ws_l1_reverse'; "):
        with_spectral_radius(params, 0.5, "gru")


@pytest.mark.parametrize("radius,dtype", [(1e39, np.float32), (1e-320, np.float32), (1e-39, np.float32),
                                          (10 ** 400, np.float32), (10 ** 400, np.float64), (math.inf, np.float64)],
                         ids=["1e39-f32", "1e-320-f32", "1e-39-f32", "10**400-f32", "10**400-f64", "inf-f64"])
def test_a_radius_the_dtype_cannot_hold_is_refused(radius, dtype):
    params = gpubptt.init_params(2, 3, 1, dtype=dtype, seed=0)
    name = np.dtype(dtype).name
    with pytest.raises(ValueError, match=rf"^radius: expected a number that {name} holds, .* to .*, got "):
        with_spectral_radius(params, radius)


def test_a_radius_that_makes_ws_overflow_is_refused_without_a_warning():
    """Entries far above the spectral radius (a non-normal Ws) overflow though the radius itself fits."""
    params = gpubptt.init_params(2, 2, 1, dtype=np.float32, seed=0)
    params["Ws"] = np.array([[0.1, 10.0], [0.0, 0.1]], np.float32)  # radius 0.1, an entry of 10
    kept = params["Ws"].copy()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no RuntimeWarning of the overflow: the error says it
        with pytest.raises(ValueError, match=r"^radius: 1e\+38 rescales params\['Ws'\] past what float32 holds"):
            with_spectral_radius(params, 1e38)
        assert with_spectral_radius(params, 3.0)["Ws"][0, 1] == pytest.approx(300.0)
    np.testing.assert_array_equal(params["Ws"], kept)


@pytest.mark.parametrize("path,error,match", [
    (5, TypeError, r"^path: expected a file name \(str or os\.PathLike\), got int$"),
    (None, TypeError, r"^path: expected a file name \(str or os\.PathLike\), got NoneType$"),
    ("", ValueError, r"^path: expected a file name, got ''$"),
    ("plots", ValueError, r"^path: plots is a directory, expected a file name$"),
    (os.path.join("missing", "p.png"), ValueError, r"^path: the directory missing of missing.p\.png does not exist$"),
])
def test_plot_profile_checks_the_path_first_and_leaves_nothing_behind(path, error, match, tmp_path, monkeypatch):
    params, x, s0, d = make_problem(4, 2, 2, 3, 2)
    r = contributions(params, x, d, s0=s0, backend="cpu")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "plots").mkdir()
    with pytest.raises(error, match=match):
        plot_profile(r, path)
    assert os.listdir(tmp_path) == ["plots"] and os.listdir(tmp_path / "plots") == []


def test_a_figure_that_fails_to_save_leaves_no_temporary_file(tmp_path, monkeypatch):
    matplotlib = pytest.importorskip("matplotlib", reason="the figure needs matplotlib (pip install 'gpubptt[plot]')")
    import matplotlib.figure
    import matplotlib.pyplot as plt

    def half_written(fig, f, **kwargs):  # (savefig is handed the temporary file, open)
        f.write(b"\x89PNG")
        raise OSError("No space left on device")

    params, x, s0, d = make_problem(4, 2, 2, 3, 2)
    r = contributions(params, x, d, s0=s0, backend="cpu")
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", half_written)
    figures = plt.get_fignums()
    with pytest.raises(OSError, match="No space left on device"):
        plot_profile(r, tmp_path / "p.png")
    assert os.listdir(tmp_path) == [] and plt.get_fignums() == figures  # no p.png.tmp, the figure closed


def test_gate_blocks_of_the_summands():
    params, x, s0, d = make_problem(4, 2, 2, 3, 2, seed=6, cell="gru")
    r = contributions(params, x, d, s0=s0, cell="gru", backend="cpu")
    assert r.gates == ("r", "z", "n")
    np.testing.assert_array_equal(r.block("dWs", "z"), r.dWs[:, 3:6])
    norms = r.block_norms("dWx")
    assert norms.shape == (4, 3)
    assert norms[2, 1] == pytest.approx(np.linalg.norm(r.dWx[2, 3:6]))
    assert isinstance(r.spectral_radius, dict) and set(r.spectral_radius) == {"r", "z", "n"}
    with pytest.raises(ValueError, match=r"gate: expected one of 'r', 'z', 'n', got 'f'"):
        r.block("dWs", "f")
    for bad in ("Ws", "dS_norm", "dWy"):
        with pytest.raises(ValueError, match=rf"name: expected one of 'dWx', 'dWs', 'dbx', 'dbs', got '{bad}'"):
            r.block_norms(bad)
        with pytest.raises(ValueError, match=rf"name: expected one of .* got '{bad}'"):
            r.block(bad, "z")
    params, x, s0, d = make_problem(4, 2, 2, 3, 2, seed=6)
    tanh = contributions(params, x, d, s0=s0, backend="cpu")
    assert tanh.gates == ("tanh",) and tanh.block_norms("dWs").shape == (4, 1)
    assert isinstance(tanh.spectral_radius, float)


def test_step_defaults_to_t_and_step_1_has_one_summand():
    params, x, s0, d = make_problem(3, 2, 2, 3, 2, seed=7)
    assert contributions(params, x, d, s0=s0, backend="cpu").step == 3
    r = contributions(params, x, d, step=1, s0=s0, backend="cpu")
    assert r.dWs.shape == (1, 3, 3) and r.dS_norm.shape == (1,) and math.isnan(r.rate)
    assert_close(r.dWs[0], e_n_gradient(params, x, d, s0, 1, "tanh")["Ws"], TOLERANCE["float64"], "dE_1/dWs")


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(step=0), ValueError, r"step: expected a positive integer or None, got 0"),
    (dict(step=6), ValueError, r"step: expected 1\.\.T = 1\.\.5, got 6"),
    (dict(step=2 ** 31), ValueError, r"step: expected 1\.\.T = 1\.\.5, got 2147483648"),
    (dict(step=2.0), ValueError, r"step: expected a positive integer or None, got 2\.0"),
    (dict(step=True), ValueError, r"step: expected a positive integer or None, got True"),
    (dict(step="3"), ValueError, r"step: expected a positive integer or None, got '3'"),
    (dict(bidirectional=True), ValueError, r"bidirectional: the article's sum follows the forward direction only"),
    (dict(loss="hinge"), ValueError, r"loss: expected one of 'squared', 'cross_entropy', got 'hinge'"),
    (dict(cell="lstm"), ValueError, r"params\['Ws'\]: expected shape \[4H,H\] = \(12, 3\) \(H = its width\) for cell='lstm', got \(3, 3\): "
     r"\[H,H\] is the weight of cell='tanh' or 'relu' or 'sigmoid' or 'identity'"),
    (dict(backend="gpu"), ValueError, r"backend: expected one of"),
])
def test_bad_input(kwargs, error, match):
    params, x, s0, d = make_problem(5, 2, 2, 3, 2, bidirectional=kwargs.get("bidirectional", False))
    with pytest.raises(error, match=match):
        contributions(params, x, d, s0=s0, **kwargs)


def test_bad_arrays_are_named():
    params, x, s0, d = make_problem(5, 2, 2, 3, 2)
    with pytest.raises(TypeError, match=r"d: expected a NumPy or CuPy array, got NoneType"):
        contributions(params, x, None)
    with pytest.raises(ValueError, match=r"d: expected shape \[T,B,O\] = \(5, 2, 2\), got \(4, 2, 2\)"):
        contributions(params, x, d[:4])
    with pytest.raises(TypeError, match=r"contributions\(\) got an unexpected keyword argument 'lengths'"):
        contributions(params, x, d, lengths=[5, 5])


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("loss,pad", [("squared", np.nan), ("cross_entropy", -100)])
def test_targets_away_from_step_n_are_not_read(backend, loss, pad):
    """E_N reads d at step N alone: padding elsewhere is accepted, as bptt accepts it outside its loss."""
    T, N = 5, 3
    params, x, s0, d = make_problem(T, 2, 2, 3, 2, loss=loss, seed=3)
    out = "softmax" if loss == "cross_entropy" else "identity"
    padded = d.astype(np.float64 if pad is np.nan else d.dtype)
    padded[:N - 1] = pad
    padded[N:] = pad
    kept = padded.copy()
    kw = dict(step=N, s0=s0, output_activation=out, loss=loss, backend=backend)
    want, got = contributions(params, x, d, **kw), contributions(params, x, padded, **kw)
    np.testing.assert_array_equal(padded, kept)  # the caller's d is untouched
    for k in WEIGHTS:
        np.testing.assert_array_equal(getattr(got, "d" + k), getattr(want, "d" + k))
    padded[N - 1] = pad  # at step N it is read, so refused
    with pytest.raises(ValueError, match=r"d: .* at the steps in the loss"):
        contributions(params, x, padded, **kw)


def test_inputs_are_not_modified():
    params, x, s0, d = make_problem(4, 2, 2, 3, 2, cell="lstm")
    copies = [{k: v.copy() for k, v in params.items()}, x.copy(), (s0[0].copy(), s0[1].copy()), d.copy()]
    for backend in ("reference", "cpu"):
        contributions(params, x, d, s0=s0, cell="lstm", backend=backend)
    assert all(np.array_equal(params[k], copies[0][k]) for k in params)
    np.testing.assert_array_equal(x, copies[1])
    np.testing.assert_array_equal(s0[0], copies[2][0])
    np.testing.assert_array_equal(s0[1], copies[2][1])
    np.testing.assert_array_equal(d, copies[3])


# -- gpubptt diagnose ------------------------------------------------------------------------------


def table(out):
    """{N-i: (i, norms...)} from the printed rows of numbers."""
    rows = {}
    for line in out.splitlines():
        parts = line.split()
        if parts and parts[0].isdigit():
            rows[int(parts[1])] = (int(parts[0]),) + tuple(float(p) for p in parts[2:])
    return rows


def test_diagnose_prints_the_profile_and_writes_a_png(tmp_path, capsys):
    pytest.importorskip("matplotlib", reason="the PNG needs matplotlib (pip install 'gpubptt[plot]')")
    png = tmp_path / "profile.png"
    assert main(["diagnose", "--cell", "identity", "--seq-len", "25", "--hidden", "4", "--batch", "2", "--seed", "3",
                 "--spectral-radius", "0.8", "--backend", "cpu", "--out", str(png)]) == 0
    out = capsys.readouterr().out
    assert "cell=identity, T=25, N=25, B=2, D=4, H=4" in out and "backend=cpu" in out
    assert "‖dE_N/dS_i‖" in out and "‖term i of dE_N/dWs‖" in out
    rows = table(out)
    assert sorted(rows) == list(range(10)) + [10, 20, 24]  # N-i: 0..9, every 10th, and step 1
    assert rows[24][0] == 1 and rows[0][0] == 25
    assert rows[24][2] == 0.0  # S_0 = 0: step 1 adds nothing to dE_N/dWs
    assert "spectral radius of Ws: 0.8\n" in out
    rate = float(out.split("fitted rate per step: ")[1].split()[0])
    assert 0 < rate < 1 and "vanishing" in out
    assert f"wrote {png}" in out and png.read_bytes()[:4] == b"\x89PNG"


def test_diagnose_lstm_shows_the_cell_state_and_each_gate(capsys):
    assert main(["diagnose", "--cell", "lstm", "--seq-len", "12", "--hidden", "3", "--batch", "2",
                 "--backend", "reference"]) == 0
    out = capsys.readouterr().out
    assert "‖dE_N/dc_i‖" in out and "fitted rate of ‖dE_N/dc_i‖" in out
    rows = table(out)
    assert rows and all(len(row) == 4 for row in rows.values())  # i, ‖dS‖, ‖dc‖, ‖term‖
    assert "spectral radius of Ws: i " in out and "(per gate block)" in out
    assert "wrote" not in out  # no --out, no file


def test_diagnose_explodes_past_radius_one(capsys):
    assert main(["diagnose", "--cell", "identity", "--seq-len", "30", "--hidden", "3", "--spectral-radius", "1.5",
                 "--backend", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "exploding" in out and float(out.split("fitted rate per step: ")[1].split()[0]) > 1


def test_diagnose_says_when_float32_overflows(capsys):
    """Norms past float32's range print as inf/nan; the run says why and what holds them."""
    argv = ["diagnose", "--cell", "identity", "--seq-len", "100", "--hidden", "8", "--spectral-radius", "3",
            "--backend", "cpu"]
    assert main(argv + ["--dtype", "float32"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"note: \d+ of the 100 norms are not finite: the states or the gradient overflowed float32 "
                     r"\(largest 3.4e\+38\); --dtype float64 holds up to 1.8e\+308", out), out
    assert main(argv) == 0  # float64 (the default) holds them
    assert "note:" not in capsys.readouterr().out


def test_diagnose_without_matplotlib_prints_the_table_and_says_how(tmp_path, capsys, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError("no matplotlib here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    png = tmp_path / "p.png"
    assert main(["diagnose", "--seq-len", "5", "--hidden", "3", "--backend", "cpu", "--out", str(png)]) == 0
    out = capsys.readouterr().out
    assert len(table(out)) == 5
    assert "no PNG: matplotlib is not installed (pip install 'gpubptt[plot]')" in out and not png.exists()


@pytest.mark.parametrize("argv,message", [
    (["--step", "0"], "--step: expected a positive integer, got 0"),
    (["--seq-len", "5", "--step", "6"], "--step: expected 1..T = 1..5, got 6"),
    (["--spectral-radius", "-1"], "--spectral-radius: expected a positive number, got -1.0"),
    (["--hidden", "0"], "--hidden: expected a positive integer, got 0"),
    (["--layers", "0"], "--layers: expected a positive integer, got 0"),
    (["--seq-len", "0"], "--seq-len and --batch: expected positive integers, got 0 and 4"),
    (["--dtype", "float32", "--spectral-radius", "1e39"],
     "--spectral-radius: expected a number that float32 holds, 1.175e-38 to 3.403e+38, got 1e+39"),
])
def test_diagnose_bad_options_exit_2_with_the_reason(argv, message, capsys):
    assert main(["diagnose", "--backend", "cpu"] + argv) == 2
    assert capsys.readouterr().err.strip() == f"gpubptt diagnose: error: {message}"
