"""The spec itself: reference BPTT against central finite differences, and the article's T = 3 example."""
import itertools

import numpy as np
import pytest

import gpubptt
from gpubptt.losses import LOSS_STEPS, OUTPUT_ACTIVATIONS
from gpubptt.params import CELLS

ELMAN = [c for c in CELLS if c not in ("lstm", "gru")]

from conftest import assert_close, make_problem

# (output_activation, loss) pairs that are defined: cross-entropy only with a softmax output
SETUPS = [(out, "squared") for out in OUTPUT_ACTIVATIONS] + [("softmax", "cross_entropy")]
# Central differences in float64 with h = 1e-6: truncation error ~h^2 = 1e-12 relative, and the
# rounding of L (~1e-16 |L|) divided by 2h, ~1e-10 |L| absolute. Hence 1e-6 relative to the largest
# gradient entry plus 1e-9 |L| absolute (which matters only where every entry is tiny).
FD_TOL = 1e-6


def numeric_gradient(f, a, h=1e-6):
    """Central finite differences of the scalar f() with respect to every entry of a (in place, restored)."""
    g = np.zeros_like(a)
    for i in np.ndindex(a.shape):
        keep = a[i]
        a[i] = keep + h
        up = f()
        a[i] = keep - h
        down = f()
        a[i] = keep
        g[i] = (up - down) / (2 * h)
    return g


CASES = list(itertools.product(ELMAN, SETUPS, LOSS_STEPS))


@pytest.mark.parametrize("case", range(len(CASES)), ids=lambda i: "{}-{}-{}-{}".format(*CASES[i][:1], *CASES[i][1], CASES[i][2]))
def test_reference_matches_finite_differences(case):
    cell, (out, loss), loss_steps = CASES[case]
    params, x, s0, d = make_problem(3, 2, 2, 3, 2, loss=loss, seed=case)
    if cell == "relu":  # keep pre-activations away from the kink at 0, where g1 is not differentiable
        params["bx"] += 0.3
    L, grads = gpubptt.bptt(params, x, d, s0, cell, out, loss, loss_steps, backend="reference")
    wrt = dict(params, x=x, s0=s0)

    def loss_value():
        return float(gpubptt.bptt(params, x, d, s0, cell, out, loss, loss_steps, backend="reference")[0])

    assert set(grads) == set(wrt)
    for name, a in wrt.items():
        assert_close(grads[name], numeric_gradient(loss_value, a), FD_TOL, f"d{name}", atol=1e-9 * max(1.0, abs(L)))


def test_article_worked_example_T3():
    """dE_3/dWs and dE_3/dWx as the article's three chain-rule terms, with scalar sizes (D = H = O = 1).

    S_t = g1(Wx x_t + Ws S_{t-1}), Y_t = g2(Wy S_t), E_3 = (d_3 - Y_3)^2, g1 = tanh, g2 = identity,
    no biases, B = 1: then bptt(..., loss_steps="last") is exactly dE_3/dW.
    """
    Wx, Ws, Wy = 0.7, -1.3, 0.9
    xs, S0, d3 = [0.5, -1.0, 2.0], 0.4, 0.25
    S1 = np.tanh(Wx * xs[0] + Ws * S0)
    S2 = np.tanh(Wx * xs[1] + Ws * S1)
    S3 = np.tanh(Wx * xs[2] + Ws * S2)
    Y3 = Wy * S3
    dE3_dY3 = -2 * (d3 - Y3)
    dY3_dS3 = Wy
    # dS_t/dS_{t-1} = g1'(.) Ws and the immediate dS_t/dW (S_{t-1} held fixed) = g1'(.) * input
    dS3_dS2, dS2_dS1 = (1 - S3**2) * Ws, (1 - S2**2) * Ws
    dS3_dWs, dS2_dWs, dS1_dWs = (1 - S3**2) * S2, (1 - S2**2) * S1, (1 - S1**2) * S0
    dS3_dWx, dS2_dWx, dS1_dWx = (1 - S3**2) * xs[2], (1 - S2**2) * xs[1], (1 - S1**2) * xs[0]
    dE3_dWs = (dE3_dY3 * dY3_dS3 * dS3_dWs
               + dE3_dY3 * dY3_dS3 * dS3_dS2 * dS2_dWs
               + dE3_dY3 * dY3_dS3 * dS3_dS2 * dS2_dS1 * dS1_dWs)
    dE3_dWx = (dE3_dY3 * dY3_dS3 * dS3_dWx
               + dE3_dY3 * dY3_dS3 * dS3_dS2 * dS2_dWx
               + dE3_dY3 * dY3_dS3 * dS3_dS2 * dS2_dS1 * dS1_dWx)
    dE3_dWy = dE3_dY3 * S3  # the article's dE_3/dY_3 · dY_3/dWy

    params = {"Wx": np.array([[Wx]]), "Ws": np.array([[Ws]]), "Wy": np.array([[Wy]]), "by": np.zeros(1)}
    x = np.array(xs).reshape(3, 1, 1)
    d = np.array([0.0, 0.0, d3]).reshape(3, 1, 1)
    for backend in ("reference", "cpu"):
        L, g = gpubptt.bptt(params, x, d, np.array([[S0]]), cell="tanh", loss_steps="last", backend=backend)
        assert L == pytest.approx((d3 - Y3) ** 2, rel=1e-14)
        assert g["Ws"][0, 0] == pytest.approx(dE3_dWs, rel=1e-12)
        assert g["Wx"][0, 0] == pytest.approx(dE3_dWx, rel=1e-12)
        assert g["Wy"][0, 0] == pytest.approx(dE3_dWy, rel=1e-12)


# --- gated cells, layers, directions, lengths --------------------------------------------------

STRUCTURES = [  # (cell, num_layers, bidirectional, lengths)
    ("lstm", 1, False, None), ("lstm", 1, True, [3, 1]), ("lstm", 2, False, [2, 3]), ("lstm", 2, True, [3, 2]),
    ("gru", 1, False, None), ("gru", 1, True, [1, 3]), ("gru", 2, False, None), ("gru", 2, True, [2, 3]),
    ("tanh", 2, True, [3, 1]),
]


def _entries(s0):
    return {"s0[0]": s0[0], "s0[1]": s0[1]} if isinstance(s0, tuple) else {"s0": s0}


@pytest.mark.parametrize("case", range(len(STRUCTURES)), ids=lambda i: "{}-L{}-bi{}-len{}".format(*STRUCTURES[i]))
def test_gated_and_stacked_reference_matches_finite_differences(case):
    cell, num_layers, bidirectional, lengths = STRUCTURES[case]
    kw = dict(num_layers=num_layers, bidirectional=bidirectional, lengths=lengths)
    params, x, s0, d = make_problem(3, 2, 2, 2, 2, cell=cell, seed=100 + case, num_layers=num_layers,
                                    bidirectional=bidirectional)
    L, grads = gpubptt.bptt(params, x, d, s0, cell, backend="reference", **kw)

    def loss_value():
        return float(gpubptt.bptt(params, x, d, s0, cell, backend="reference", **kw)[0])

    g_s0 = grads["s0"] if isinstance(s0, tuple) else (grads["s0"],)
    wrt = dict(params, x=x, **_entries(s0))
    analytic = dict(grads, **dict(zip(_entries(s0), g_s0)))
    for name, a in wrt.items():
        assert_close(analytic[name], numeric_gradient(loss_value, a), FD_TOL, f"d{name}", atol=1e-9 * max(1.0, abs(L)))
    if lengths is not None:  # steps past a sequence's end get no gradient
        for b, n in enumerate(lengths):
            assert not np.any(grads["x"][n:, b])


# --- the options of bptt, each against its definition ------------------------------------------

def _chunked(params, x, d, s0, cell, k, backend):
    """TBPTT(k, k) by hand: BPTT of each chunk of k steps from the state the previous chunk ended in,
    held constant; the parameter gradients add up."""
    T = x.shape[0]
    total, grads, state = 0.0, None, s0
    for start in range(0, T, k):
        sl = slice(start, start + k)
        L, g, next_state = gpubptt.bptt(params, x[sl], d[sl], state, cell, backend=backend, return_state=True)
        total += L
        if grads is None:
            grads = {key: v.copy() for key, v in g.items() if key not in ("x", "s0")}
            grads["x"], grads["s0"] = [g["x"]], g["s0"]
        else:
            for key in params:
                grads[key] += g[key]
            grads["x"].append(g["x"])
        state = next_state
    grads["x"] = np.concatenate(grads["x"])
    return total, grads


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("cell", ["tanh", "lstm", "gru"])
def test_truncate_is_bptt_of_chunks_carrying_the_state(cell, backend):
    params, x, s0, d = make_problem(7, 2, 2, 3, 2, cell=cell, seed=11)
    L, g = gpubptt.bptt(params, x, d, s0, cell, backend=backend, truncate=3)
    L_ref, g_ref = _chunked(params, x, d, s0, cell, 3, backend)
    assert_close(L, L_ref, 1e-12, "L")
    for key in g:
        assert_close(g[key], g_ref[key], 1e-10, f"d{key}")
    # and a chunk as long as the sequence is full BPTT, exactly
    full = gpubptt.bptt(params, x, d, s0, cell, backend=backend)[1]
    same = gpubptt.bptt(params, x, d, s0, cell, backend=backend, truncate=7)[1]
    longer = gpubptt.bptt(params, x, d, s0, cell, backend=backend, truncate=50)[1]
    for key in params:
        assert np.array_equal(same[key], full[key]) and np.array_equal(longer[key], full[key])
        assert not np.allclose(g[key], full[key]) or key in ("Wy", "by")


def test_clip_step_worked_example():
    """T = 2, H = D = O = 1, identity cell and output, no biases: dL/dS_2 = -2(d2 - Y2) Wy is clipped
    to norm c before it flows on, and dL/dS_1 = (dE_1/dS_1 + clipped dL/dS_2 · Ws) is clipped again."""
    Wx, Ws, Wy, c = 0.5, 2.0, 3.0, 0.7
    x1, x2, d1, d2 = 1.0, -1.0, 0.3, 4.0
    S1 = Wx * x1
    S2 = Wx * x2 + Ws * S1
    Y1, Y2 = Wy * S1, Wy * S2
    g2 = -2 * (d2 - Y2) * Wy
    g2 = g2 * min(1.0, c / abs(g2))
    g1 = -2 * (d1 - Y1) * Wy + g2 * Ws
    g1 = g1 * min(1.0, c / abs(g1))
    assert abs(-2 * (d2 - Y2) * Wy) > c and abs(-2 * (d1 - Y1) * Wy + g2 * Ws) > c  # both steps clip
    params = {"Wx": np.array([[Wx]]), "Ws": np.array([[Ws]]), "Wy": np.array([[Wy]]), "by": np.zeros(1)}
    x, d = np.array([x1, x2]).reshape(2, 1, 1), np.array([d1, d2]).reshape(2, 1, 1)
    for backend in ("reference", "cpu"):
        _, g = gpubptt.bptt(params, x, d, cell="identity", backend=backend, clip_step=c)
        assert g["Ws"][0, 0] == pytest.approx(g2 * S1, rel=1e-12)
        assert g["Wx"][0, 0] == pytest.approx(g2 * x2 + g1 * x1, rel=1e-12)
        assert g["s0"][0, 0] == pytest.approx(g1 * Ws, rel=1e-12)
        big = gpubptt.bptt(params, x, d, cell="identity", backend=backend, clip_step=1e9)[1]
        assert big["Ws"][0, 0] == pytest.approx(gpubptt.bptt(params, x, d, cell="identity", backend=backend)[1]["Ws"][0, 0])


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_loss_steps_k_is_the_loss_of_the_last_k_steps(backend):
    params, x, s0, d = make_problem(6, 3, 2, 4, 2, cell="gru", seed=5)
    lengths = [6, 2, 4]
    Y, _ = gpubptt.forward(params, x, s0, "gru", backend=backend, lengths=lengths)
    L, _ = gpubptt.bptt(params, x, d, s0, "gru", loss_steps=2, backend=backend, lengths=lengths)
    expected = sum(((d[t, b] - Y[t, b]) ** 2).sum() for b, n in enumerate(lengths) for t in range(n - 2, n)) / 3
    assert L == pytest.approx(expected, rel=1e-12)
    last = gpubptt.bptt(params, x, d, s0, "gru", loss_steps="last", backend=backend, lengths=lengths)
    one = gpubptt.bptt(params, x, d, s0, "gru", loss_steps=1, backend=backend, lengths=lengths)
    assert last[0] == one[0] and all(np.array_equal(last[1][k], one[1][k]) for k in params)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_loss_steps_per_sequence_are_each_sequence_own_last_k(backend):
    """One k per sequence (TBPTT's windows over sequences of their own lengths): each sequence's own
    last k steps, 0 none of them, k past its length all of them; one k for all is the int k."""
    params, x, s0, d = make_problem(6, 3, 2, 4, 2, cell="gru", seed=5)
    lengths, ks = [6, 2, 4], [3, 0, 7]
    Y, _ = gpubptt.forward(params, x, s0, "gru", backend=backend, lengths=lengths)
    L, g = gpubptt.bptt(params, x, d, s0, "gru", loss_steps=ks, backend=backend, lengths=lengths)
    expected = sum(((d[t, b] - Y[t, b]) ** 2).sum() for b, n in enumerate(lengths) for t in range(max(0, n - ks[b]), n))
    assert L == pytest.approx(expected / 3, rel=1e-12)
    # each sequence alone (B = 1, its rows up to its length), the batch's gradient their mean
    first = gpubptt.bptt(params, x[:6, :1], d[:6, :1], s0[:1], "gru", loss_steps=3, backend=backend)[1]
    third = gpubptt.bptt(params, x[:4, 2:], d[:4, 2:], s0[2:], "gru", loss_steps="all", backend=backend)[1]
    for k in params:
        assert_close(g[k], (first[k] + third[k]) / 3, 1e-12, k)
    one = gpubptt.bptt(params, x, d, s0, "gru", loss_steps=np.array([2, 2, 2]), backend=backend, lengths=lengths)
    two = gpubptt.bptt(params, x, d, s0, "gru", loss_steps=2, backend=backend, lengths=lengths)
    assert one[0] == two[0] and all(np.array_equal(one[1][k], two[1][k]) for k in params)
    none = gpubptt.bptt(params, x, d, s0, "gru", loss_steps=[0, 0, 0], backend=backend, lengths=lengths)
    assert none[0] == 0 and not any(np.any(none[1][k]) for k in params)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("cell", ["tanh", "lstm"])
def test_returned_state_carries_a_sequence_across_chunks(cell, backend):
    kw = dict(num_layers=2)
    params, x, s0, _ = make_problem(6, 2, 3, 4, 2, cell=cell, seed=9, **kw)
    Y, S = gpubptt.forward(params, x, s0, cell, backend=backend, **kw)
    Y1, S1, state = gpubptt.forward(params, x[:4], s0, cell, backend=backend, return_state=True, **kw)
    Y2, S2 = gpubptt.forward(params, x[4:], state, cell, backend=backend, **kw)
    assert_close(np.concatenate([Y1, Y2]), Y, 1e-12, "Y")
    mid = gpubptt.forward(params, x, s0, cell, backend=backend, return_state=True, state_step=4, **kw)[2]
    assert_close(mid, state, 1e-12, "state after 4 steps")
    top_h = mid[0][1] if cell == "lstm" else mid[1]  # layer 1's h after step 4 is S[3]
    assert_close(top_h, S[3], 1e-12, "top state")


@pytest.mark.parametrize("cell", ["sigmoid", "lstm", "gru"])
def test_saturated_sigmoids_give_no_overflow_warning(cell):
    """Pre-activations of ±1e4: every sigmoid (the sigmoid cell, the gates, the output) is computed
    without an exp overflowing (a RuntimeWarning, an error under -W error), and agrees with the CPU
    kernels, which saturate the same way."""
    import warnings

    params, x, _, d = make_problem(4, 2, 3, 5, 2, cell=cell, seed=5)
    x = x * 1e4
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        L, g = gpubptt.bptt(params, x, d, cell=cell, output_activation="sigmoid", backend="reference")
    assert np.isfinite(L) and all(np.isfinite(g[k]).all() for k in params)
    L_cpu, g_cpu = gpubptt.bptt(params, x, d, cell=cell, output_activation="sigmoid", backend="cpu")
    assert_close(L_cpu, L, 1e-9, "loss")
    for k in params:
        assert_close(g_cpu[k], g[k], 1e-9, k, atol=1e-12)
    from gpubptt.reference import sigmoid
    a = np.array([-800.0, -30.0, 0.0, 2.0, 800.0])
    with np.errstate(over="ignore"):
        np.testing.assert_allclose(sigmoid(a), 1.0 / (1.0 + np.exp(-a)), rtol=4e-16, atol=0)
