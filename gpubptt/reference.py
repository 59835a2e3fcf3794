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

The same loops run the LSTM and GRU cells (torch.nn.LSTM's and torch.nn.GRU's equations), stacked
layers (layer l+1 reads layer l's states, both directions concatenated), the reverse direction
(each sequence from its own last step back to its first), variable lengths (past its end a
sequence's state stays put: the forward direction repeats its final state, the reverse direction
holds its initial one; no loss, no gradient there), truncation (gradient stops at the start of
every chunk of ``truncate`` processing steps) and the article's per-step clipping (the gradient
reaching a state, dL/dh_t and for LSTM dL/dc_t too, is rescaled to norm ``clip_step`` when longer).

Readable, never optimised: one sample, one layer, one step at a time. Every fast backend is tested
against this module, and this module against central finite differences.
"""
import numpy as np

from .params import layer_suffixes


def g1(cell, a):
    if cell == "tanh":
        return np.tanh(a)
    if cell == "relu":
        return np.maximum(a, 0.0)
    if cell == "sigmoid":
        return sigmoid(a)
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


def sigmoid(a):
    """1 / (1 + exp(-a)), as exp(a) / (1 + exp(a)) where a < 0 so that no exp overflows (the same number)."""
    e = np.exp(-np.abs(a))
    return np.where(a >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def in_loss(t, length, loss_steps):
    """Is step t of a sequence of ``length`` steps part of the loss?"""
    if t >= length:
        return False
    if loss_steps == "all":
        return True
    if loss_steps == "last":
        return t == length - 1
    return t >= length - loss_steps  # the last k steps


# --- one step of one cell, forward and backward, for one sample ---------------------------------

def cell_step(cell, w, inp, state):
    """(new state, cache) of one step; ``w`` holds this layer's Wx, Ws, bx, bs (zeros without bias),
    ``state`` is h (or (h, c) for LSTM)."""
    if cell == "lstm":
        h, c = state
        a = w["Wx"] @ inp + w["bx"] + w["Ws"] @ h + w["bs"]
        H = h.size
        i, f, g, o = sigmoid(a[:H]), sigmoid(a[H:2 * H]), np.tanh(a[2 * H:3 * H]), sigmoid(a[3 * H:])
        c_new = f * c + i * g
        h_new = o * np.tanh(c_new)
        return (h_new, c_new), dict(inp=inp, h_prev=h, c_prev=c, i=i, f=f, g=g, o=o, c=c_new)
    if cell == "gru":
        h = state
        H = h.size
        ax = w["Wx"] @ inp + w["bx"]  # input part of r, z, n
        ah = w["Ws"] @ h + w["bs"]  # state part of r, z, n
        r = sigmoid(ax[:H] + ah[:H])
        z = sigmoid(ax[H:2 * H] + ah[H:2 * H])
        n = np.tanh(ax[2 * H:] + r * ah[2 * H:])
        h_new = (1 - z) * n + z * h
        return h_new, dict(inp=inp, h_prev=h, r=r, z=z, n=n, ah_n=ah[2 * H:])
    h_new = g1(cell, w["Wx"] @ inp + w["bx"] + w["Ws"] @ state + w["bs"])
    return h_new, dict(inp=inp, h_prev=state, h=h_new)


def cell_step_backward(cell, w, cache, dh, dc, grads):
    """Backward through one step given dL/dh (and dL/dc through c_{t+1} for LSTM); adds this step's
    summands to ``grads`` (Wx, Ws, bx, bs) and returns (dL/d input, dL/dh_prev, dL/dc_prev)."""
    if cell == "lstm":
        i, f, g, o, c = cache["i"], cache["f"], cache["g"], cache["o"], cache["c"]
        tc = np.tanh(c)
        dc_total = dc + dh * o * (1 - tc * tc)
        da_x = da_h = np.concatenate([dc_total * g * i * (1 - i), dc_total * cache["c_prev"] * f * (1 - f),
                                      dc_total * i * (1 - g * g), dh * tc * o * (1 - o)])
        dh_direct, dc_prev = 0.0, dc_total * f
    elif cell == "gru":
        r, z, n = cache["r"], cache["z"], cache["n"]
        dn_pre = dh * (1 - z) * (1 - n * n)
        dr_pre = dn_pre * cache["ah_n"] * r * (1 - r)
        dz_pre = dh * (cache["h_prev"] - n) * z * (1 - z)
        da_x = np.concatenate([dr_pre, dz_pre, dn_pre])  # gradient of the input part ax
        da_h = np.concatenate([dr_pre, dz_pre, dn_pre * r])  # gradient of the state part ah
        dh_direct, dc_prev = dh * z, np.zeros_like(dh)  # no cell state
    else:
        da_x = da_h = dh * g1_prime(cell, cache["h"])  # dL/d(pre-activation)
        dh_direct, dc_prev = 0.0, np.zeros_like(dh)  # no cell state
    grads["Wx"] += np.outer(da_x, cache["inp"])
    grads["bx"] += da_x
    grads["Ws"] += np.outer(da_h, cache["h_prev"])  # this step's summand of dL/dWs
    grads["bs"] += da_h
    return w["Wx"].T @ da_x, w["Ws"].T @ da_h + dh_direct, dc_prev


# --- whole networks ----------------------------------------------------------------------------

def _weights(params, sfx, cell, H):
    G = {"lstm": 4, "gru": 3}.get(cell, 1)
    w = {k: np.asarray(params[k + sfx], np.float64) for k in ("Wx", "Ws")}
    for k in ("bx", "bs"):
        w[k] = np.asarray(params[k + sfx], np.float64) if k + sfx in params else np.zeros(G * H)
    return w


def _initial(states0, idx, b, cell, H):
    if states0 is None:
        return (np.zeros(H), np.zeros(H)) if cell == "lstm" else np.zeros(H)
    s = states0[idx]
    if cell == "lstm":
        return np.asarray(s[0][b], np.float64), np.asarray(s[1][b], np.float64)
    return np.asarray(s[b], np.float64)


def _run_forward(params, x, states0, cell, num_layers, bidirectional, lengths):
    """Per sample, per layer and direction, the states at every position and the caches."""
    x = np.asarray(x, np.float64)
    T, B, _ = x.shape
    H = params["Ws" + layer_suffixes(num_layers, bidirectional)[0][2]].shape[1]
    dirs = 2 if bidirectional else 1
    lengths = [T] * B if lengths is None else [int(n) for n in lengths]
    runs = {}  # (b, layer, direction) -> dict(states per position, caches per position, initial)
    top = np.zeros((T, B, dirs * H))
    for b in range(B):
        n = lengths[b]
        layer_input = [x[t, b] for t in range(T)]
        for layer in range(num_layers):
            outputs = []
            for _, direction, sfx in layer_suffixes(num_layers, bidirectional)[layer * dirs:(layer + 1) * dirs]:
                w = _weights(params, sfx, cell, H)
                initial = _initial(states0, layer * dirs + direction, b, cell, H)
                states, caches = [None] * T, [None] * T
                state = initial
                order = list(range(n))[::-1] if direction else list(range(n))
                for t in order:
                    state, caches[t] = cell_step(cell, w, layer_input[t], state)
                    states[t] = state
                for t in range(n, T):  # past the end: the state stays put
                    states[t] = initial if direction else state
                runs[b, layer, direction] = dict(states=states, caches=caches, order=order, initial=initial)
                outputs.append([s[0] if cell == "lstm" else s for s in states])
            layer_input = [np.concatenate([out[t] for out in outputs]) for t in range(T)]
        top[:, b] = layer_input
    return top, runs, lengths


def _outputs(params, top, output_activation):
    Wy, by = np.asarray(params["Wy"], np.float64), np.asarray(params["by"], np.float64)
    T, B, _ = top.shape
    Z = np.zeros((T, B, Wy.shape[0]))
    Y = np.zeros_like(Z)
    for b in range(B):
        for t in range(T):
            Z[t, b] = Wy @ top[t, b] + by
            Y[t, b] = g2(output_activation, Z[t, b])
    return Y, Z


def forward(params, x, states0, cell, output_activation, num_layers=1, bidirectional=False, lengths=None,
            state_step=None, return_cells=False):
    """(Y [T,B,O], S [T,B,dirs·H], finals, C) in float64: S is the top layer's states h, both
    directions; C (return_cells=True, LSTM) the top layer's cell states likewise, else None.

    ``states0``: None or a list over layers and directions of h0 [B,H] (or (h0, c0)); ``finals``
    come back the same way: the state after step ``state_step`` (default T) forward, at the
    sequence's first step in reverse."""
    top, runs, _ = _run_forward(params, x, states0, cell, num_layers, bidirectional, lengths)
    Y, _ = _outputs(params, top, output_activation)
    T, B, _ = top.shape
    C = None
    if return_cells:
        dirs = 2 if bidirectional else 1
        C = np.array([[np.concatenate([runs[b, num_layers - 1, r]["states"][t][1] for r in range(dirs)])
                       for b in range(B)] for t in range(T)])
    finals = []
    for layer in range(num_layers):
        for direction in range(2 if bidirectional else 1):
            t = 0 if direction else (state_step or T) - 1
            per_b = [runs[b, layer, direction]["states"][t] for b in range(B)]
            if cell == "lstm":
                finals.append((np.array([s[0] for s in per_b]), np.array([s[1] for s in per_b])))
            else:
                finals.append(np.array(per_b))
    return Y, top, finals, C


def bptt(params, x, d, states0, cell="tanh", output_activation="identity", loss="squared", loss_steps="all",
         num_layers=1, bidirectional=False, lengths=None, truncate=None, clip_step=None):
    """(L, grads, dstates0) in float64: grads has every parameter key plus 'x' [T,B,D]; dstates0 is
    dL/d(initial state) per layer and direction, structured like ``states0``."""
    top, runs, lengths = _run_forward(params, x, states0, cell, num_layers, bidirectional, lengths)
    Y, Z = _outputs(params, top, output_activation)
    x = np.asarray(x, np.float64)
    T, B, _ = x.shape
    dirs = 2 if bidirectional else 1
    H = top.shape[2] // dirs
    Wy = np.asarray(params["Wy"], np.float64)
    grads = {k: np.zeros(np.shape(v)) for k, v in params.items()}
    grads["x"] = np.zeros_like(x)
    dstates = [None] * (num_layers * dirs)
    L = 0.0
    for b in range(B):
        # the loss and dL/d(output of the top layer) at every step
        d_top = [np.zeros(dirs * H) for _ in range(T)]
        steps = int(loss_steps[b]) if isinstance(loss_steps, np.ndarray) else loss_steps  # its own k, if one each
        for t in range(T):
            if not in_loss(t, lengths[b], steps):
                continue
            if loss == "cross_entropy":
                c, z = int(d[t, b]), Z[t, b]
                L += (np.log(np.sum(np.exp(z - z.max()))) + z.max() - z[c]) / B
                dZ = Y[t, b].copy()  # the softmax Jacobian applied to dE/dY = -1/Y_c, simplified
                dZ[c] -= 1.0
                dZ /= B
            else:
                L += np.sum((d[t, b] - Y[t, b]) ** 2) / B
                dZ = g2_jacobian(output_activation, Y[t, b]).T @ (-2.0 * (d[t, b] - Y[t, b]) / B)
            grads["Wy"] += np.outer(dZ, top[t, b])
            grads["by"] += dZ
            d_top[t] = Wy.T @ dZ
        # layers from the top down; each gives the gradient of its input, the layer below's output
        d_out = d_top
        for layer in reversed(range(num_layers)):
            d_in = [None] * T
            for _, direction, sfx in layer_suffixes(num_layers, bidirectional)[layer * dirs:(layer + 1) * dirs]:
                run = runs[b, layer, direction]
                w = _weights(params, sfx, cell, H)
                g = {k: np.zeros_like(v) for k, v in w.items()}
                dh_carry, dc_carry = np.zeros(H), np.zeros(H)
                order = run["order"]
                for i in reversed(range(len(order))):
                    t = order[i]
                    if truncate and (i + 1) % truncate == 0:  # step i+1 starts a chunk: nothing flows back
                        dh_carry, dc_carry = np.zeros(H), np.zeros(H)
                    dh = d_out[t][direction * H:(direction + 1) * H] + dh_carry
                    dc = dc_carry
                    if clip_step:  # the article's clipping of the gradient reaching the state
                        norm = np.sqrt(np.sum(dh * dh) + (np.sum(dc * dc) if cell == "lstm" else 0.0))
                        if norm > clip_step:
                            dh, dc = dh * clip_step / norm, dc * clip_step / norm
                    dinp, dh_carry, dc_carry = cell_step_backward(cell, w, run["caches"][t], dh, dc, g)
                    d_in[t] = dinp if d_in[t] is None else d_in[t] + dinp
                for k in ("Wx", "Ws", "bx", "bs"):
                    if k + sfx in grads:
                        grads[k + sfx] += g[k]
                idx = layer * dirs + direction
                if dstates[idx] is None:
                    dstates[idx] = ((np.zeros((B, H)), np.zeros((B, H))) if cell == "lstm" else np.zeros((B, H)))
                if cell == "lstm":
                    dstates[idx][0][b], dstates[idx][1][b] = dh_carry, dc_carry
                else:
                    dstates[idx][b] = dh_carry
            width = x.shape[2] if layer == 0 else dirs * H
            d_out = [np.zeros(width) if v is None else v for v in d_in]
        grads["x"][:, b] = d_out
    return L, grads, dstates
