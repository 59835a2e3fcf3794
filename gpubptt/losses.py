"""Output activations g2 and the losses, vectorised over all T·B rows (NumPy or CuPy, ``xp``).

Used by the ``cpu`` and ``cuda`` backends; ``reference.py`` spells the same formulas out per step.

``squared``:        L = (1/B) Σ_b Σ_{t in steps} Σ_o (d - Y)^2    (the seed's E_t, summed)
``cross_entropy``:  L = (1/B) Σ_b Σ_{t in steps} -log Y[t,b,d[t,b]]  (Y = softmax(Z); log-sum-exp)
``loss_steps``: ``"all"`` (every step) or ``"last"`` (E_T only: a many-to-one sequence).
"""
OUTPUT_ACTIVATIONS = ("identity", "tanh", "sigmoid", "softmax")
LOSSES = ("squared", "cross_entropy")
LOSS_STEPS = ("all", "last")


def output_activation(Z, name, xp):
    """Y = g2(Z) for Z [T,B,O] (softmax over the last axis)."""
    if name == "tanh":
        return xp.tanh(Z)
    if name == "sigmoid":
        # exp of -|Z| never overflows: sigmoid(z) = 1/(1+e^-z) for z >= 0, e^z/(1+e^z) below
        e = xp.exp(-xp.abs(Z))
        return xp.where(Z >= 0, 1 / (1 + e), e / (1 + e)).astype(Z.dtype, copy=False)
    if name == "softmax":
        e = xp.exp(Z - Z.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)
    return Z.copy()


def loss_and_output_grad(Z, Y, d, name, loss, loss_steps, xp):
    """(L, dL/dZ [T,B,O]) for outputs Y = g2(Z) and desired outputs d.

    L is a 0-d array of Z's dtype (NumPy or CuPy: reading it from the GPU is the caller's choice).
    """
    T, B, _ = Z.shape
    steps = slice(T - 1, T) if loss_steps == "last" else slice(0, T)
    Zs, Ys, ds = Z[steps], Y[steps], d[steps]
    dZ = xp.zeros_like(Z)
    if loss == "cross_entropy":
        # -log softmax(z)[c] = logsumexp(z) - z[c]; its gradient is (softmax(z) - onehot(c)) / B
        m = Zs.max(axis=-1, keepdims=True)
        lse = (m + xp.log(xp.exp(Zs - m).sum(axis=-1, keepdims=True)))[..., 0]
        t, b = xp.indices(ds.shape)
        L = (lse - Zs[t, b, ds]).sum() / B
        g = Ys.copy()
        g[t, b, ds] -= 1
        dZ[steps] = g / B
        return L, dZ
    r = Ys - ds
    L = (r * r).sum() / B
    dY = (2 / B) * r
    dZ[steps] = _output_grad(dY, Ys, name, xp)
    return L, dZ


def _output_grad(dY, Y, name, xp):
    """dL/dZ from dL/dY through g2, written with Y = g2(Z)."""
    if name == "tanh":
        return dY * (1 - Y * Y)
    if name == "sigmoid":
        return dY * Y * (1 - Y)
    if name == "softmax":  # Jacobian diag(Y) - Y Yᵀ applied to dY
        return Y * (dY - (dY * Y).sum(axis=-1, keepdims=True))
    return dY
