"""Forward outputs and every gradient equal those of torch.nn.RNN + torch.nn.Linear (same weights, same loss)."""
import numpy as np
import pytest

import gpubptt

from conftest import assert_close, make_problem

torch = pytest.importorskip("torch", reason="PyTorch is the oracle here; install torch==2.13.0 (CPU) to run")

# float64: both sides are exact up to summation order (~1e-15); float32: torch and we round
# differently at every step, measured ~1e-6 on these sizes.
TOL = {np.float64: 1e-9, np.float32: 1e-4}


def torch_bptt(params, x, d, s0, cell, out, loss, steps):
    T, B, D = x.shape
    H, O = params["Ws"].shape[0], params["Wy"].shape[0]
    dtype = torch.float64 if x.dtype == np.float64 else torch.float32
    rnn = torch.nn.RNN(D, H, nonlinearity=cell, bias="bx" in params, dtype=dtype)
    lin = torch.nn.Linear(H, O, dtype=dtype)
    with torch.no_grad():
        rnn.weight_ih_l0.copy_(torch.from_numpy(params["Wx"]))
        rnn.weight_hh_l0.copy_(torch.from_numpy(params["Ws"]))
        if "bx" in params:
            rnn.bias_ih_l0.copy_(torch.from_numpy(params["bx"]))
            rnn.bias_hh_l0.copy_(torch.from_numpy(params["bs"]))
        lin.weight.copy_(torch.from_numpy(params["Wy"]))
        lin.bias.copy_(torch.from_numpy(params["by"]))
    xt = torch.from_numpy(x).requires_grad_()
    h0 = torch.from_numpy(s0)[None].clone().requires_grad_()
    S, _ = rnn(xt, h0)
    Z = lin(S)
    Y = {"identity": Z, "softmax": torch.softmax(Z, -1), "tanh": torch.tanh(Z), "sigmoid": torch.sigmoid(Z)}[out]
    sl = slice(T - 1, T) if steps == "last" else slice(0, T)
    if loss == "cross_entropy":
        L = torch.nn.functional.cross_entropy(Z[sl].reshape(-1, O), torch.from_numpy(d[sl]).reshape(-1), reduction="sum") / B
    else:
        L = ((torch.from_numpy(d[sl]) - Y[sl]) ** 2).sum() / B
    L.backward()
    grads = {"Wx": rnn.weight_ih_l0.grad, "Ws": rnn.weight_hh_l0.grad, "Wy": lin.weight.grad, "by": lin.bias.grad,
             "x": xt.grad, "s0": h0.grad[0]}
    if "bx" in params:
        grads.update(bx=rnn.bias_ih_l0.grad, bs=rnn.bias_hh_l0.grad)
    return Y.detach().numpy(), S.detach().numpy(), L.item(), {k: v.numpy() for k, v in grads.items()}


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("cell", ["tanh", "relu"])
@pytest.mark.parametrize("out,loss,steps", [
    ("identity", "squared", "all"), ("identity", "squared", "last"), ("sigmoid", "squared", "all"),
    ("softmax", "cross_entropy", "all"),
])
@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_matches_torch(backend, out, loss, steps, cell, dtype):
    params, x, s0, d = make_problem(7, 3, 4, 6, 3, dtype=dtype, loss=loss, seed=3)
    tY, tS, tL, tg = torch_bptt(params, x, d, s0, cell, out, loss, steps)
    Y, S = gpubptt.forward(params, x, s0, cell, out, backend=backend)
    L, g = gpubptt.bptt(params, x, d, s0, cell, out, loss, steps, backend=backend)
    tol = TOL[dtype]
    assert_close(Y, tY, tol, "Y")
    assert_close(S, tS, tol, "S")
    assert_close(L, tL, tol, "L")
    assert set(g) == set(tg)
    for k in tg:
        assert_close(g[k], tg[k], tol, f"d{k}")


def test_matches_torch_without_bias():
    params, x, s0, d = make_problem(5, 2, 3, 4, 2, bias=False, seed=5)
    tY, tS, tL, tg = torch_bptt(params, x, d, s0, "tanh", "identity", "squared", "all")
    L, g = gpubptt.bptt(params, x, d, s0, backend="cpu")
    for k in tg:
        assert_close(g[k], tg[k], 1e-9, f"d{k}")
