"""The spec itself: reference BPTT against central finite differences, and the article's T = 3 example."""
import itertools

import numpy as np
import pytest

import gpubptt
from gpubptt import reference
from gpubptt.losses import LOSS_STEPS, OUTPUT_ACTIVATIONS
from gpubptt.params import CELLS

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


CASES = list(itertools.product(CELLS, SETUPS, LOSS_STEPS))


@pytest.mark.parametrize("case", range(len(CASES)), ids=lambda i: "{}-{}-{}-{}".format(*CASES[i][:1], *CASES[i][1], CASES[i][2]))
def test_reference_matches_finite_differences(case):
    cell, (out, loss), loss_steps = CASES[case]
    params, x, s0, d = make_problem(3, 2, 2, 3, 2, loss=loss, seed=case)
    if cell == "relu":  # keep pre-activations away from the kink at 0, where g1 is not differentiable
        params["bx"] += 0.3
    L, grads = reference.bptt(params, x, d, s0, cell, out, loss, loss_steps)
    wrt = dict(params, x=x, s0=s0)

    def loss_value():
        return reference.bptt(params, x, d, s0, cell, out, loss, loss_steps)[0]

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
