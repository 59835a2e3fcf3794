"""Forward and BPTT for the ``cpu`` and ``cuda`` backends (DESIGN.md §4).

Only the recurrence is sequential. Everything else is one large matrix product over all T·B rows on
the backend's BLAS (NumPy's on the CPU, cuBLAS through CuPy on the GPU):

    forward:  U = x Wxᵀ + bx + bs  ->  kernel: S_t = g1(U_t + S_{t-1} Wsᵀ)  ->  Y = g2(S Wyᵀ + by)
    backward: dS_out = dZ Wy  ->  kernel: delta_t = (dS_out_t + delta_{t+1} Ws) ⊙ g1'(S_t)
              dWs = Σ_t delta_tᵀ S_{t-1},  dWx = Σ_t delta_tᵀ x_t,  dWy = Σ_t dZ_tᵀ S_t : one product each

Arrays are already validated, contiguous and of one dtype; ``be.xp`` is NumPy or CuPy.
Saved for backward (rule 5): S [T,B,H] (written over U, in place) and Z, Y [T,B,O].
"""
from . import losses
from .kernels.activations import CODES


def forward(params, x, s0, cell, output_activation, be):
    """(Y [T,B,O], S [T,B,H], Z [T,B,O])."""
    xp = be.xp
    p = params
    T, B, D = x.shape
    H, O = p["Ws"].shape[0], p["Wy"].shape[0]
    if s0 is None:
        s0 = xp.zeros((B, H), dtype=x.dtype)
    U = x.reshape(T * B, D) @ p["Wx"].T  # [T·B,H]: the input products of every step at once
    if "bx" in p:
        U += p["bx"] + p["bs"]
    S = U.reshape(T, B, H)  # the recurrence turns U into S in place
    be.kernels("elman").forward_recurrence(S, xp.ascontiguousarray(p["Ws"].T), s0, CODES[cell], S)
    Z = (S.reshape(T * B, H) @ p["Wy"].T + p["by"]).reshape(T, B, O)
    Y = losses.output_activation(Z, output_activation, xp)
    return Y, S, Z


def bptt(params, x, d, s0, cell, output_activation, loss, loss_steps, be):
    """(L, grads): grads has every parameter key plus 'x' [T,B,D] and 's0' [B,H]."""
    xp = be.xp
    p = params
    T, B, D = x.shape
    H, O = p["Ws"].shape[0], p["Wy"].shape[0]
    Y, S, Z = forward(p, x, s0, cell, output_activation, be)
    L, dZ = losses.loss_and_output_grad(Z, Y, d, output_activation, loss, loss_steps, xp)
    dZ2, S2 = dZ.reshape(T * B, O), S.reshape(T * B, H)
    grads = {"Wy": dZ2.T @ S2, "by": dZ2.sum(axis=0)}
    delta = (dZ2 @ p["Wy"]).reshape(T, B, H)  # dS_out, turned into delta in place
    be.kernels("elman").backward_recurrence(delta, p["Ws"], S, CODES[cell], delta)
    delta2 = delta.reshape(T * B, H)
    grads["Wx"] = delta2.T @ x.reshape(T * B, D)
    # Σ_t delta_tᵀ S_{t-1}: steps 2..T pair with S_1..S_{T-1}, step 1 with S0
    grads["Ws"] = delta[1:].reshape((T - 1) * B, H).T @ S[:-1].reshape((T - 1) * B, H)
    if s0 is not None:
        grads["Ws"] += delta[0].T @ s0
    if "bx" in p:
        grads["bx"] = delta2.sum(axis=0)
        grads["bs"] = grads["bx"].copy()
    grads["x"] = (delta2 @ p["Wx"]).reshape(T, B, D)
    grads["s0"] = delta[0] @ p["Ws"]
    return L, grads
