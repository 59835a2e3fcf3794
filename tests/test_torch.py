"""PyTorch as the oracle (issue 3): outputs, final states and every gradient equal those of
torch.nn.RNN (tanh, relu) / LSTM / GRU + nn.Linear, with the weights of torch's own seeded init moved
over by ``gpubptt.interop.from_torch`` and the gradients moved back by ``interop.to_torch``.

Padded batches go through ``pack_padded_sequence(..., enforce_sorted=False)`` on the torch side and
``lengths`` on ours; both losses cover the same (valid) steps.
"""
from dataclasses import dataclass

import numpy as np
import pytest

import gpubptt
from gpubptt import interop

from conftest import assert_close

torch = pytest.importorskip("torch", reason="PyTorch is the oracle here; install torch (CPU) to run")
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence  # noqa: E402

# Largest relative error (max |ours - torch| / max |torch|) per dtype. float64: both sides compute the
# same formulas exactly up to summation order, ~1e-15 per operation, so 1e-9 leaves room for the
# growth over steps and layers and still catches any real difference. float32: torch and we round
# differently at every operation (~6e-8 each) and that grows through the recurrence and the products
# over T·B rows; measured at most ~1.2e-6 on these sizes (and below 1e-6 at T=30, H=32), so 1e-4
# leaves margin without hiding a bug. The error is relative to each array's largest entry: an array
# that cancels to almost zero (possible with H=1) would need an absolute floor; these sizes avoid it.
TOL = {np.float64: 1e-9, np.float32: 1e-4}


@dataclass(frozen=True)
class Case:
    cell: str  # "tanh", "relu" (torch.nn.RNN), "lstm", "gru"
    layers: int = 1
    bidir: bool = False
    bias: bool = True
    lengths: tuple = None  # None: every sequence runs T steps
    out: str = "identity"  # output activation; "softmax" goes with cross-entropy
    steps: str = "all"  # loss_steps
    s0: bool = True  # pass an initial state (else zeros on both sides)

    @property
    def loss(self):
        return "cross_entropy" if self.out == "softmax" else "squared"

    def __str__(self):
        parts = [self.cell, f"L{self.layers}", "bi" if self.bidir else "uni"]
        parts += [] if self.bias else ["nobias"]
        parts += ["len" if self.lengths else "full", self.out, self.steps]
        parts += [] if self.s0 else ["nos0"]
        return "-".join(parts)


# cpu backend: T=6, B=4; lengths include T itself, 1, and an unsorted order (enforce_sorted=False)
LEN4 = (6, 2, 5, 1)
CPU_CASES = [
    Case("tanh"),
    Case("tanh", out="sigmoid", steps="last", s0=False),
    Case("relu", lengths=LEN4, steps="last"),
    Case("relu", bidir=True, bias=False, lengths=LEN4),  # bidirectional relu RNN without bias
    Case("relu", layers=2, bias=False, out="softmax", steps="last"),
    Case("tanh", layers=2, bidir=True, lengths=LEN4, out="softmax"),
    Case("tanh", layers=3, bidir=True, lengths=LEN4, out="tanh", s0=False),
    Case("lstm"),
    Case("lstm", out="softmax", steps="last"),
    Case("lstm", layers=2, bidir=True, lengths=LEN4),  # the key combination
    Case("lstm", layers=2, bidir=True, lengths=LEN4, out="softmax", steps="last"),
    Case("lstm", layers=3, bias=False, lengths=LEN4, steps="last"),
    Case("lstm", bidir=True, bias=False, out="softmax", s0=False),
    Case("gru", lengths=LEN4, out="softmax"),
    Case("gru", layers=3),  # 3-layer GRU
    Case("gru", layers=3, bidir=True, lengths=LEN4, steps="last"),
    Case("gru", layers=2, bidir=True, bias=False, lengths=LEN4, out="softmax", steps="last"),
    Case("gru", bias=False, out="sigmoid", steps="last", s0=False),
]
CPU_SIZES = dict(T=6, B=4, D=3, H=5, O=3)

# reference backend (plain loops, slow): tiny sizes, fewer cases
LEN3 = (4, 1, 3)
REFERENCE_CASES = [
    Case("tanh", lengths=LEN3),
    Case("relu", bidir=True, bias=False, lengths=LEN3, out="softmax", steps="last"),
    Case("lstm", layers=2, bidir=True, lengths=LEN3),
    Case("lstm", bias=False, out="softmax", steps="last", s0=False),
    Case("gru", layers=3, lengths=LEN3, steps="last"),
    Case("gru", bidir=True, out="softmax"),
]
REFERENCE_SIZES = dict(T=4, B=3, D=2, H=3, O=2)


def build_torch(case, D, H, O, dtype, seed):
    """The torch model, from torch's own seeded initialisation: the recurrent module with the output
    layer attached as its submodule ``out``, so its ``state_dict()`` is keyed weight_ih_l0, ...,
    out.weight, out.bias, the layout ``interop.from_torch`` reads."""
    torch.manual_seed(seed)
    kw = dict(num_layers=case.layers, bidirectional=case.bidir, bias=case.bias, dtype=dtype)
    if case.cell in ("tanh", "relu"):
        rnn = torch.nn.RNN(D, H, nonlinearity=case.cell, **kw)
    else:
        rnn = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[case.cell](D, H, **kw)
    rnn.out = torch.nn.Linear((2 if case.bidir else 1) * H, O, dtype=dtype)
    return rnn


def loss_mask(T, lengths, steps):
    """[T,B] float64 mask of the steps in the loss, as gpubptt defines them (lengths: [B])."""
    t = np.arange(T)[:, None]
    n = np.asarray(lengths)[None, :]
    return ((t < n) if steps == "all" else (t == n - 1)).astype(np.float64)


def torch_run(rnn, case, x, h0, c0, d, lengths):
    """Everything torch computes: Y, S (padded with zeros past each length), L, h_n, c_n, and the
    grads of every parameter (by state_dict key), of x and of h0 (c0)."""
    T, B, _ = x.shape
    xt = torch.from_numpy(x.copy()).requires_grad_()
    h0t = torch.from_numpy(h0.copy()).requires_grad_()
    c0t = torch.from_numpy(c0.copy()).requires_grad_() if case.cell == "lstm" else None
    inp = xt
    if case.lengths is not None:
        inp = pack_padded_sequence(xt, torch.as_tensor(lengths, dtype=torch.int64), enforce_sorted=False)
    out, hn = rnn(inp, (h0t, c0t) if case.cell == "lstm" else h0t)
    S = pad_packed_sequence(out, total_length=T)[0] if case.lengths is not None else out
    Z = rnn.out(S)
    Y = {"identity": Z, "softmax": torch.softmax(Z, -1), "tanh": torch.tanh(Z), "sigmoid": torch.sigmoid(Z)}[case.out]
    mask = torch.from_numpy(loss_mask(T, lengths, case.steps)).to(Z.dtype)
    if case.loss == "cross_entropy":
        per_step = torch.nn.functional.cross_entropy(Z.reshape(T * B, -1), torch.from_numpy(d).reshape(-1),
                                                     reduction="none").reshape(T, B)
        L = (per_step * mask).sum() / B
    else:
        L = (((torch.from_numpy(d) - Y) ** 2).sum(-1) * mask).sum() / B
    L.backward()
    hn, cn = hn if case.cell == "lstm" else (hn, None)
    grads = {k: p.grad.numpy() for k, p in rnn.named_parameters()}
    ds0 = (h0t.grad.numpy(), c0t.grad.numpy()) if case.cell == "lstm" else h0t.grad.numpy()
    return dict(Y=Y.detach().numpy(), S=S.detach().numpy(), L=L.item(), hn=hn.detach().numpy(),
                cn=None if cn is None else cn.detach().numpy(), grads=grads, dx=xt.grad.numpy(), ds0=ds0)


def check_against_torch(case, backend, dtype, T, B, D, H, O, seed=0):
    tdtype = {np.float64: torch.float64, np.float32: torch.float32}[dtype]
    rnn = build_torch(case, D, H, O, tdtype, seed)
    sd = rnn.state_dict()
    structure = dict(num_layers=case.layers, bidirectional=case.bidir)
    params = interop.from_torch(sd, cell=case.cell, **structure)

    rng = np.random.default_rng(seed + 1)
    n_states = case.layers * (2 if case.bidir else 1)
    x = rng.standard_normal((T, B, D)).astype(dtype)
    zeros = not case.s0
    h0 = np.zeros((n_states, B, H), dtype) if zeros else (0.5 * rng.standard_normal((n_states, B, H))).astype(dtype)
    c0 = np.zeros((n_states, B, H), dtype) if zeros else (0.5 * rng.standard_normal((n_states, B, H))).astype(dtype)
    d = rng.integers(0, O, (T, B)) if case.loss == "cross_entropy" else rng.standard_normal((T, B, O)).astype(dtype)
    lengths = np.full(B, T) if case.lengths is None else np.array(case.lengths)
    t = torch_run(rnn, case, x, h0, c0, d, lengths)

    # ours: s0 [B,H] for one layer in one direction, else torch's [L·dirs,B,H]; (h0, c0) for LSTM
    def ours_state(a):
        return a[0] if n_states == 1 else a

    s0 = None
    if case.s0:
        s0 = (ours_state(h0), ours_state(c0)) if case.cell == "lstm" else ours_state(h0)
    kw = dict(backend=backend, lengths=None if case.lengths is None else np.array(case.lengths), **structure)
    tol = TOL[dtype]

    out = gpubptt.forward(params, x, s0, case.cell, case.out, return_state=True,
                          return_cells=case.cell == "lstm", **kw)
    Y, S, state = out[0], out[1], out[-1]
    valid = loss_mask(T, lengths, "all").astype(bool)  # [T,B]: torch's S and Y are padding beyond
    assert_close(Y[valid], t["Y"][valid], tol, "Y at valid steps")
    assert_close(S[valid], t["S"][valid], tol, "S (top layer, both directions) at valid steps")
    h_n, c_n = state if case.cell == "lstm" else (state, None)
    assert_close(h_n, ours_state(t["hn"]), tol, "final state h_n")
    if case.cell == "lstm":
        assert_close(c_n, ours_state(t["cn"]), tol, "final cell state c_n")
        # the top layer's cell states at each sequence's last step, forward direction, are c_n's
        C = out[2]
        last = C[lengths - 1, np.arange(B), :H]
        assert_close(last, t["cn"][n_states - (2 if case.bidir else 1)], tol, "C at each sequence's last step")

    L, grads = gpubptt.bptt(params, x, d, s0, case.cell, case.out, case.loss, case.steps, **kw)
    assert_close(L, t["L"], tol, "L")
    ours = interop.to_torch(grads, cell=case.cell, **structure)
    assert list(ours) == list(t["grads"]), "to_torch(grads) keys differ from torch's named_parameters()"
    for k, g in t["grads"].items():
        assert ours[k].dtype == g.dtype, f"d{k}: dtype {ours[k].dtype}, torch's {g.dtype}"
        assert_close(ours[k], g, tol, f"d{k} (to_torch(grads)[{k!r}] against torch's .grad)")
    assert_close(grads["x"], t["dx"], tol, "dx")
    if case.lengths is not None:
        assert not np.any(grads["x"][~valid]), "dx must be zero past each sequence's length"
    if case.cell == "lstm":
        assert isinstance(grads["s0"], tuple) and len(grads["s0"]) == 2
        assert_close(grads["s0"][0], ours_state(t["ds0"][0]), tol, "dh0")
        assert_close(grads["s0"][1], ours_state(t["ds0"][1]), tol, "dc0")
    else:
        assert_close(grads["s0"], ours_state(t["ds0"]), tol, "ds0")


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("case", CPU_CASES, ids=str)
def test_cpu_matches_torch(case, dtype):
    check_against_torch(case, "cpu", dtype, **CPU_SIZES)


@pytest.mark.parametrize("case", REFERENCE_CASES, ids=str)
def test_reference_matches_torch(case):
    check_against_torch(case, "reference", np.float64, **REFERENCE_SIZES)


@pytest.mark.parametrize("case", [REFERENCE_CASES[2], REFERENCE_CASES[5]], ids=str)
def test_reference_matches_torch_float32(case):
    check_against_torch(case, "reference", np.float32, **REFERENCE_SIZES)
