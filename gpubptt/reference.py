"""The spec: the seed article's RNN and its BPTT written as plain loops, in float64.

    S_t = g1(Wx x_t + bx + Ws S_{t-1} + bs)        hidden state ("memory unit")
    Y_t = g2(Wy S_t + by)                          output
    E_t = Σ_o (d_t - Y_t)^2                        squared error at step t
    L   = (1/B) Σ_b Σ_{t in loss steps} E_t

BPTT, as in the article: dE_N/dWs = Σ_{i<=N} dE_N/dY_N · dY_N/dS_N · (Π_{k=i+1..N} dS_k/dS_{k-1}) ·
dS_i/dWs. Summing over N as well, every product chain that passes through S_i shares the factor
dL/dS_i, which obeys the reverse-time recurrence

    dL/dS_i = dE_i/dS_i + dL/dS_{i+1} · dS_{i+1}/dS_i

so the loops below walk time backwards once, carrying dL/dS_{i+1}, and add step i's summand
dL/dS_i · dS_i/dWs to the gradient. ``gpubptt.diagnostics`` keeps the summands apart instead.

Readable, never optimised: one sample and one step at a time. Every fast backend is tested
against this module, and this module against central finite differences.
"""
import numpy as np


def g1(cell, a):
    if cell == "tanh":
        return np.tanh(a)
    if cell == "relu":
        return np.maximum(a, 0.0)
    if cell == "sigmoid":
        return 1.0 / (1.0 + np.exp(-a))
    return a


def g1_prime(cell, s):
    """g1'(a) written through s = g1(a)."""
    if cell == "tanh":
        return 1.0 - s * s
    if cell == "relu":
        return (s > 0).astype(np.float64)
    if cell == "sigmoid":
        return s * (1.0 - s)
    return np.ones_like(s)


def g2(name, z):
    if name == "softmax":
        e = np.exp(z - z.max())
        return e / e.sum()
    return g1(name, z)  # identity, tanh and sigmoid are the same functions as for g1


def g2_jacobian(name, y):
    """dY/dZ for one output vector, an O×O matrix."""
    if name == "softmax":
        return np.diag(y) - np.outer(y, y)
    return np.diag(g1_prime(name, y))


def forward(params, x, s0=None, cell="tanh", output_activation="identity"):
    """(Y [T,B,O], S [T,B,H], Z [T,B,O]) in float64; Z is the output layer before g2."""
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    x = np.asarray(x, np.float64)
    T, B, _ = x.shape
    H, O = p["Ws"].shape[0], p["Wy"].shape[0]
    bx, bs = p.get("bx", np.zeros(H)), p.get("bs", np.zeros(H))
    s0 = np.zeros((B, H)) if s0 is None else np.asarray(s0, np.float64)
    S, Z, Y = np.zeros((T, B, H)), np.zeros((T, B, O)), np.zeros((T, B, O))
    for b in range(B):
        s_prev = s0[b]
        for t in range(T):
            S[t, b] = g1(cell, p["Wx"] @ x[t, b] + bx + p["Ws"] @ s_prev + bs)
            Z[t, b] = p["Wy"] @ S[t, b] + p["by"]
            Y[t, b] = g2(output_activation, Z[t, b])
            s_prev = S[t, b]
    return Y, S, Z


def bptt(params, x, d, s0=None, cell="tanh", output_activation="identity", loss="squared", loss_steps="all"):
    """(L, grads) in float64: grads has every parameter key plus 'x' [T,B,D] and 's0' [B,H]."""
    Y, S, Z = forward(params, x, s0, cell, output_activation)
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    x = np.asarray(x, np.float64)
    T, B, _ = x.shape
    H = p["Ws"].shape[0]
    s0 = np.zeros((B, H)) if s0 is None else np.asarray(s0, np.float64)
    steps = [T - 1] if loss_steps == "last" else list(range(T))
    grads = {k: np.zeros_like(v) for k, v in p.items()}
    grads["x"], grads["s0"] = np.zeros_like(x), np.zeros((B, H))
    L = 0.0
    for b in range(B):
        dS_next = np.zeros(H)  # dL/dS_{t+1} · dS_{t+1}/dS_t: what flows back from later steps
        for t in reversed(range(T)):
            dZ = np.zeros(Z.shape[2])
            if t in steps:
                if loss == "cross_entropy":
                    c = int(d[t, b])
                    z = Z[t, b]
                    L += (np.log(np.sum(np.exp(z - z.max()))) + z.max() - z[c]) / B
                    # dY/dZ of the softmax applied to dE/dY = -1/Y_c, simplified
                    dZ = Y[t, b].copy()
                    dZ[c] -= 1.0
                    dZ /= B
                else:
                    E_t = np.sum((d[t, b] - Y[t, b]) ** 2)
                    L += E_t / B
                    dE_dY = -2.0 * (d[t, b] - Y[t, b]) / B
                    dZ = g2_jacobian(output_activation, Y[t, b]).T @ dE_dY
            grads["Wy"] += np.outer(dZ, S[t, b])
            grads["by"] += dZ
            dS = p["Wy"].T @ dZ + dS_next  # dL/dS_t
            da = dS * g1_prime(cell, S[t, b])  # dL/d(Wx x_t + bx + Ws S_{t-1} + bs)
            s_prev = S[t - 1, b] if t > 0 else s0[b]
            grads["Ws"] += np.outer(da, s_prev)  # step t's summand of dL/dWs
            grads["Wx"] += np.outer(da, x[t, b])
            if "bx" in grads:
                grads["bx"] += da
                grads["bs"] += da
            grads["x"][t, b] = p["Wx"].T @ da
            dS_next = p["Ws"].T @ da
        grads["s0"][b] = dS_next
    return L, grads
