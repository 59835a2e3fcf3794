"""Output activations g2 and the losses, vectorised over all T·B rows (NumPy or CuPy, ``xp``).

Used by the ``cpu`` and ``cuda`` backends; ``reference.py`` spells the same formulas out per step.

``squared``:        L = (1/B) Σ_b Σ_{t in steps} Σ_o (d - Y)^2    (the seed's E_t, summed)
``cross_entropy``:  L = (1/B) Σ_b Σ_{t in steps} -log Y[t,b,d[t,b]]  (Y = softmax(Z); log-sum-exp)
The steps in the loss (``loss_steps``) of a sequence of length n (T without ``lengths``):
``"all"`` every step t < n; ``"last"`` only t = n - 1 (many-to-one); an int k: the last k steps;
one int k per sequence (TBPTT's windows over sequences of their own lengths): its last k steps.
"""
OUTPUT_ACTIVATIONS = ("identity", "tanh", "sigmoid", "softmax")
LOSSES = ("squared", "cross_entropy")
LOSS_STEPS = ("all", "last")  # or a positive int k, or one int k >= 0 per sequence


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


def loss_mask(T, lengths, loss_steps, dtype, xp):
    """[T,B] of 1 where step t of sequence b is in the loss, else 0 (``lengths`` [B] on xp's device)."""
    t = xp.arange(T, dtype=lengths.dtype)[:, None]
    n = lengths[None, :]
    if isinstance(loss_steps, int):  # the last k steps
        keep = (t < n) & (t >= n - loss_steps)
    elif isinstance(loss_steps, str):
        keep = t < n if loss_steps == "all" else t == n - 1
    else:  # the last k steps, one k per sequence (a NumPy array [B])
        keep = (t < n) & (t >= n - xp.asarray(loss_steps)[None, :])
    return keep.astype(dtype)


def loss_and_output_grad(Z, Y, d, name, loss, mask, xp):
    """(L, dL/dZ [T,B,O]) for outputs Y = g2(Z), desired outputs d and the loss mask [T,B].

    L is a 0-d array of Z's dtype (NumPy or CuPy: reading it from the GPU is the caller's choice).
    """
    B = Z.shape[1]
    n = Z.dtype.type(B)  # B in Z's dtype: a Python int would make NumPy 1.x's float32 scalar a float64
    if loss == "cross_entropy":
        # -log softmax(z)[c] = logsumexp(z) - z[c]; its gradient is (softmax(z) - onehot(c)) / B
        m = Z.max(axis=-1, keepdims=True)
        lse = (m + xp.log(xp.exp(Z - m).sum(axis=-1, keepdims=True)))[..., 0]
        t, b = xp.indices(d.shape)
        L = ((lse - Z[t, b, d]) * mask).sum() / n
        dZ = Y.copy()
        dZ[t, b, d] -= 1
        dZ *= (mask / B)[..., None]
        return L, dZ
    r = Y - d
    L = (r * r * mask[..., None]).sum() / n
    dY = r * ((2 / B) * mask)[..., None]
    return L, _output_grad(dY, Y, name, xp)


def _output_grad(dY, Y, name, xp):
    """dL/dZ from dL/dY through g2, written with Y = g2(Z)."""
    if name == "tanh":
        return dY * (1 - Y * Y)
    if name == "sigmoid":
        return dY * Y * (1 - Y)
    if name == "softmax":  # Jacobian diag(Y) - Y Yᵀ applied to dY
        return Y * (dY - (dY * Y).sum(axis=-1, keepdims=True))
    return dY
