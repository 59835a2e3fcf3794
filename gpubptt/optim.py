"""Optimizers SGD (momentum, Nesterov), Adam and Adagrad, with PyTorch's formulations, as fused
update kernels on each backend (``kernels/optim_cpu.py``, ``kernels/optim_cuda.py``).

    opt = gpubptt.optim.Adam(model.params, lr=1e-3)
    L, grads = model.bptt(x, d)
    info = opt.step(grads, clip_norm=1.0)     # updates model.params IN PLACE; grads are not changed

``step`` does, in a fixed number of kernel launches and with no value read back to the host: the
global norm of the parameter gradients (``gpubptt.clipping``), the clip coefficient, the NaN/Inf
guard, and one fused update kernel per parameter array that clips (by value, then by global norm),
applies weight decay and the optimizer's rule, and writes the parameter and the optimizer state. A
step whose gradients are not finite changes nothing: it is counted in ``opt.skipped`` and reported
by the ``applied`` flag it returns. The optimizer's step number ``t`` (Adam's bias corrections,
Adagrad's decay, SGD's first momentum step) counts applied steps only.

The parameter arrays must be C-contiguous and writable (they are updated in place through flat
views), and no two may share memory (one array under two keys would be stepped twice); the
optimizer state lives on the same device. On the ``cuda`` backend with NumPy parameters (a GPU, the
parameters on the host) each step copies them to the GPU and back: call ``model.to_device()`` first
to avoid that. ``reference`` runs the same rules as plain NumPy formulas in float64, the spec the
kernels are tested against (and against ``torch.optim``).

``state_dict()`` / ``load_state_dict()`` give and take the whole state (step counters and every
buffer, as NumPy arrays): it is part of a training checkpoint.
"""
from collections import namedtuple
from collections.abc import Mapping
import inspect
import math

import numpy as np

from .arrays import ValueChecks, check_bool, check_choice, check_float_array, check_shape, to_device, to_host, xp_of
from .backend import resolve
from .clipping import Reduction, check_arrays, check_threshold, norm_of, parameter_grads, reference_coefficients

__all__ = ["Optimizer", "SGD", "Adam", "Adagrad", "StepInfo", "make_optimizer", "OPTIMIZERS", "DEFAULT_LR"]

OPTIMIZERS = ("sgd", "adam", "adagrad")

StepInfo = namedtuple("StepInfo", "norm applied")
StepInfo.__doc__ = """What one ``Optimizer.step`` did, as 0-d arrays on the compute device (reading them
waits for the GPU): ``norm`` the global norm of the parameter gradients before clipping (float64),
``applied`` whether the update was applied (False: the gradients were not finite, nothing changed)."""


def _number(name, value, low=0.0, low_open=False, high=None, high_open=True):
    """A finite real hyperparameter in the given range; returns float."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name}: expected a number, got {value!r}")
    value = float(value)
    ok = math.isfinite(value) and (value > low if low_open else value >= low)
    if high is not None:
        ok = ok and (value < high if high_open else value <= high)
    if not ok:
        lo = f"{'>' if low_open else '>='} {low:g}"
        hi = "" if high is None else f" and {'<' if high_open else '<='} {high:g}"
        raise ValueError(f"{name}: expected a finite number {lo}{hi}, got {value!r}")
    return value


class Optimizer:
    """Base class: holds the parameters (updated in place), the state buffers and the step counters.
    ``hyper``: the hyperparameters as given (``lr`` through the ``lr`` property, checked).

    Subclasses define ``name``, ``buffers`` (names of per-parameter state arrays), ``non_negative``
    (those of them that can never hold a negative value: sums of squares), ``_kernel_update`` (the fused
    kernel call) and ``_reference_update`` (the NumPy formula).
    """

    name = None
    buffers = ()
    non_negative = ()

    def __init__(self, params, backend="auto", **hyper):
        if not isinstance(params, Mapping):
            raise TypeError(f"params: expected a dict of arrays, got {type(params).__name__}")
        xp, dtype = check_arrays("params", params, in_place=True)
        self.params = params
        self.hyper = hyper
        self.dtype = dtype
        self.be = resolve(backend, on_device=xp is not np)
        sx = self.be.xp  # where the state lives: CuPy for cuda (also with host parameters), else NumPy
        self.state = {b: {k: sx.zeros(p.shape, dtype) for k, p in params.items()} for b in self.active_buffers()}
        self._counters = sx.zeros(2, dtype=np.int64)  # [steps applied, steps skipped]
        self._reduction = None if self.be.name == "reference" else Reduction(self.be)
        self._dummy = sx.zeros(1, dtype)  # stands in for a buffer the rule does not use

    def active_buffers(self):
        """The state buffers this optimizer keeps (SGD without momentum keeps none)."""
        return self.buffers

    @property
    def backend(self):
        """The backend the updates run on: 'reference', 'cpu' or 'cuda'."""
        return self.be.name

    @property
    def lr(self):
        """The learning rate, read at every step: set it between steps for a schedule
        (``opt.lr = 0.5 * opt.lr``); the other hyperparameters are in ``hyper``."""
        return self.hyper["lr"]

    @lr.setter
    def lr(self, value):
        self.hyper["lr"] = _number("lr", value, low_open=True)

    @property
    def steps(self):
        """Steps applied so far (t); reading it waits for the GPU."""
        return int(to_host(self._counters)[0])

    @property
    def skipped(self):
        """Steps skipped because the gradients were not finite; reading it waits for the GPU."""
        return int(to_host(self._counters)[1])

    @property
    def counters(self):
        """The device array [steps applied, steps skipped] (int64), read without waiting for it."""
        return self._counters

    def _check_grads(self, grads):
        pg = parameter_grads(grads)
        missing = sorted(set(self.params) - set(pg))
        unknown = sorted(set(pg) - set(self.params), key=repr)
        if missing or unknown:
            raise ValueError(
                f"grads: expected the keys of params ({', '.join(map(repr, self.params))}); "
                + "; ".join(p for p in (missing and f"missing {', '.join(map(repr, missing))}",
                                        unknown and f"unknown {', '.join(map(repr, unknown))}") if p)
            )
        check_arrays("grads", pg, self.dtype)
        xp_of({**{f"grads[{k!r}]": g for k, g in pg.items()}, **{f"params[{k!r}]": p for k, p in self.params.items()}})
        for k, g in pg.items():
            shape = self.params[k].shape
            check_shape(f"grads[{k!r}]", g, ("*",) * len(shape), shape)
        return pg

    def step(self, grads, clip_norm=None, clip_value=None):
        """Apply one update to ``self.params`` in place from ``grads`` (a ``bptt`` result or any dict
        with a gradient per parameter; "x" and "s0" are ignored). ``grads`` is not modified.

        clip_value  limit every gradient element to [-clip_value, clip_value] first (None: off)
        clip_norm   then scale the gradients by clip_norm/‖g‖ when ‖g‖ > clip_norm (None: off)
        Returns a ``StepInfo`` (norm before clipping, applied) of 0-d arrays on the compute device.
        """
        clip_norm = check_threshold("clip_norm", clip_norm)
        clip_value = check_threshold("clip_value", clip_value)
        pg = self._check_grads(grads)
        if self.be.name == "reference":
            return self._reference_step(pg, clip_norm, clip_value)
        host_io = self.be.host_io
        work_p = to_device(self.params) if host_io else self.params
        work_g = to_device(pg) if host_io else pg
        flat_g = {k: g.reshape(-1) for k, g in work_g.items()}
        limit, max_norm = clip_value or 0.0, clip_norm or 0.0
        info = self._reduction.run(list(flat_g.values()), limit, max_norm, self._counters)
        k = self.be.kernels("optim")
        for key, p in work_p.items():
            state = [self.state[b][key].reshape(-1) for b in self.active_buffers()]
            self._kernel_update(k, p.reshape(-1), flat_g[key], state, info, limit)
        if host_io:
            for key, p in self.params.items():
                p[...] = to_host(work_p[key])
        applied = (info[2:] != 0).reshape(())  # a 0-d array on NumPy too, as on the GPU
        return StepInfo(norm_of(info, self.be), to_host(applied) if host_io else applied)

    def _reference_step(self, pg, clip_norm, clip_value):
        keys = list(self.params)
        grads = [np.asarray(pg[k], np.float64) for k in keys]
        norm, coef, finite = reference_coefficients(grads, clip_value, clip_norm)
        if not finite:
            self._counters[1] += 1
            return StepInfo(np.asarray(norm), np.asarray(False))
        self._counters[0] += 1
        t = int(self._counters[0])
        for key, g in zip(keys, grads):
            if clip_value:
                g = np.clip(g, -clip_value, clip_value)
            g = g * coef
            p = self.params[key]
            state = {b: np.asarray(self.state[b][key], np.float64) for b in self.active_buffers()}
            new_p = self._reference_update(np.asarray(p, np.float64), g, state, t)
            p[...] = new_p
            for b in self.active_buffers():
                self.state[b][key][...] = state[b]
        return StepInfo(np.asarray(norm), np.asarray(True))

    def state_dict(self):
        """The whole optimizer state as NumPy arrays and plain values (for a checkpoint)."""
        counters = to_host(self._counters)
        return {
            "optimizer": self.name,
            "hyper": dict(self.hyper),
            "steps": int(counters[0]),
            "skipped": int(counters[1]),
            "buffers": {b: {k: to_host(v).copy() for k, v in self.state[b].items()} for b in self.active_buffers()},
        }

    def load_state_dict(self, state):
        """Restore a ``state_dict()``: the state buffers, the step counters and ``lr`` (validated against
        these parameters first; nothing changes on error). The other hyperparameters are this
        optimizer's own. Buffers of the other float dtype are converted."""
        if not isinstance(state, Mapping):
            raise TypeError(f"state: expected a dict from state_dict(), got {type(state).__name__}")
        if state.get("optimizer") != self.name:
            raise ValueError(f"state: saved by optimizer {state.get('optimizer')!r}, this is {self.name!r}")
        host = self._saved_buffers(state.get("buffers", {}))
        hyper = state.get("hyper", {})
        if not isinstance(hyper, Mapping):
            raise TypeError(f"state['hyper']: expected a dict of hyperparameters, got {type(hyper).__name__}")
        saved_lr = hyper.get("lr")  # as the learning rate may have been changed (a schedule)
        lr = self.lr if saved_lr is None else _number("state['hyper']['lr']", saved_lr, low_open=True)
        for name in ("steps", "skipped"):
            v = state.get(name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 0 <= v <= np.iinfo(np.int64).max:
                raise ValueError(f"state[{name!r}]: expected a non-negative 64-bit integer, got {v!r}")
        xp = self.be.xp
        for b, values in host.items():
            for k, v in values.items():
                self.state[b][k][...] = xp.asarray(v)
        self._counters[...] = xp.asarray(np.array([state["steps"], state["skipped"]], np.int64))
        self.hyper["lr"] = lr

    def _saved_buffers(self, buffers):
        """``state['buffers']`` validated (a float array of each parameter's shape per buffer and parameter,
        finite, non-negative where it must be) and converted to host arrays of this optimizer's dtype."""
        if not isinstance(buffers, Mapping):
            raise TypeError(f"state['buffers']: expected a dict {{buffer name: {{parameter name: array}}}}, "
                            f"got {type(buffers).__name__}")
        if set(buffers) != set(self.active_buffers()):
            raise ValueError(f"state['buffers']: expected {sorted(self.active_buffers())}, "
                             f"got {sorted(buffers, key=repr)}")
        checks, host = ValueChecks(), {}
        for b in self.active_buffers():
            saved = buffers[b]
            if not isinstance(saved, Mapping):
                raise TypeError(f"state['buffers'][{b!r}]: expected a dict {{parameter name: array}}, "
                                f"got {type(saved).__name__}")
            if set(saved) != set(self.params):
                raise ValueError(f"state['buffers'][{b!r}]: keys {sorted(saved, key=repr)} differ from the "
                                 f"parameters' {sorted(self.params, key=repr)}")
            host[b] = {}
            for k, p in self.params.items():
                where = f"state['buffers'][{b!r}][{k!r}]"
                check_float_array(where, saved[k], ("*",) * p.ndim, p.shape, checks=checks)
                with np.errstate(over="ignore"):  # a float64 value past float32's range: refused below
                    host[b][k] = to_host(saved[k]).astype(self.dtype)
        checks.run()
        for b, values in host.items():
            for k, v in values.items():
                where = f"state['buffers'][{b!r}][{k!r}]"
                if not np.isfinite(v).all():  # finite before, so a float64 value past float32's range
                    raise ValueError(f"{where}: holds values beyond the range of {self.dtype}, this optimizer's dtype")
                if b in self.non_negative and (v < 0).any():
                    raise ValueError(f"{where}: expected non-negative values (a sum of squares), "
                                     f"got a minimum of {float(v.min())!r}")
        return host

    def __repr__(self):
        hyper = ", ".join(f"{k}={v!r}" for k, v in self.hyper.items())
        return f"{type(self).__name__}({hyper}, backend={self.backend!r})"


class SGD(Optimizer):
    """``torch.optim.SGD``: with momentum μ and dampening τ, buf = g at the first step and
    μ·buf + (1-τ)·g after; the step uses buf, or g + μ·buf with Nesterov; weight decay adds wd·p to g."""

    name = "sgd"

    def __init__(self, params, lr, momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0, backend="auto"):
        lr = _number("lr", lr, low_open=True)
        momentum = _number("momentum", momentum)
        dampening = _number("dampening", dampening, high=1.0, high_open=False)
        weight_decay = _number("weight_decay", weight_decay)
        check_bool("nesterov", nesterov)
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError(f"nesterov: needs momentum > 0 and dampening = 0, got momentum={momentum!r}, "
                             f"dampening={dampening!r}")
        super().__init__(params, backend, lr=lr, momentum=momentum, dampening=dampening, nesterov=bool(nesterov),
                         weight_decay=weight_decay)

    def active_buffers(self):
        return ("momentum",) if self.hyper["momentum"] != 0 else ()

    def _kernel_update(self, k, p, g, state, info, limit):
        h = self.hyper
        buf = state[0] if state else self._dummy
        k.sgd_update(p, g, buf, info, self._counters, limit, h["lr"], h["momentum"], h["dampening"], h["nesterov"],
                     h["weight_decay"])

    def _reference_update(self, p, g, state, t):
        h = self.hyper
        g = g + h["weight_decay"] * p
        if h["momentum"]:
            buf = g if t == 1 else h["momentum"] * state["momentum"] + (1 - h["dampening"]) * g
            state["momentum"] = buf
            g = g + h["momentum"] * buf if h["nesterov"] else buf
        return p - h["lr"] * g


class Adam(Optimizer):
    """``torch.optim.Adam`` (no amsgrad): m, v the moment estimates, bias-corrected by 1 - β^t;
    weight decay adds wd·p to the gradient (L2, not AdamW's decoupled decay)."""

    name = "adam"
    buffers = ("exp_avg", "exp_avg_sq")
    non_negative = ("exp_avg_sq",)

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, backend="auto"):
        lr = _number("lr", lr, low_open=True)
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise TypeError(f"betas: expected a pair (beta1, beta2), got {betas!r}")
        beta1 = _number("betas[0]", betas[0], high=1.0)
        beta2 = _number("betas[1]", betas[1], high=1.0)
        eps = _number("eps", eps, low_open=True)
        weight_decay = _number("weight_decay", weight_decay)
        super().__init__(params, backend, lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay)

    def _kernel_update(self, k, p, g, state, info, limit):
        h = self.hyper
        k.adam_update(p, g, state[0], state[1], info, self._counters, limit, h["lr"], h["beta1"], h["beta2"],
                      h["eps"], h["weight_decay"])

    def _reference_update(self, p, g, state, t):
        h = self.hyper
        g = g + h["weight_decay"] * p
        m = h["beta1"] * state["exp_avg"] + (1 - h["beta1"]) * g
        v = h["beta2"] * state["exp_avg_sq"] + (1 - h["beta2"]) * g * g
        state["exp_avg"], state["exp_avg_sq"] = m, v
        m_hat = m / (1 - h["beta1"] ** t)
        v_hat = v / (1 - h["beta2"] ** t)
        # torch adds eps to sqrt(v)/sqrt(1-β2^t), i.e. to sqrt(v_hat): the same thing written out
        return p - h["lr"] * m_hat / (np.sqrt(v_hat) + h["eps"])


class Adagrad(Optimizer):
    """``torch.optim.Adagrad``: s += g², p -= lr_t·g/(sqrt(s) + eps), lr_t = lr / (1 + (t-1)·lr_decay)."""

    name = "adagrad"
    buffers = ("sum",)
    non_negative = ("sum",)

    def __init__(self, params, lr=1e-2, lr_decay=0.0, weight_decay=0.0, initial_accumulator_value=0.0, eps=1e-10,
                 backend="auto"):
        lr = _number("lr", lr, low_open=True)
        lr_decay = _number("lr_decay", lr_decay)
        weight_decay = _number("weight_decay", weight_decay)
        initial = _number("initial_accumulator_value", initial_accumulator_value)
        eps = _number("eps", eps, low_open=True)
        super().__init__(params, backend, lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
                         initial_accumulator_value=initial, eps=eps)
        for s in self.state["sum"].values():
            s[...] = initial

    def _kernel_update(self, k, p, g, state, info, limit):
        h = self.hyper
        k.adagrad_update(p, g, state[0], info, self._counters, limit, h["lr"], h["lr_decay"], h["eps"],
                         h["weight_decay"])

    def _reference_update(self, p, g, state, t):
        h = self.hyper
        g = g + h["weight_decay"] * p
        state["sum"] = state["sum"] + g * g
        lr_t = h["lr"] / (1 + (t - 1) * h["lr_decay"])
        return p - lr_t * g / (np.sqrt(state["sum"]) + h["eps"])


CLASSES = {"sgd": SGD, "adam": Adam, "adagrad": Adagrad}
DEFAULT_LR = {"sgd": 0.1, "adam": 1e-3, "adagrad": 1e-2}


def make_optimizer(name, params, lr=None, backend="auto", **options):
    """An optimizer by name ('sgd', 'adam', 'adagrad'); lr None takes DEFAULT_LR[name]; ``options`` are
    the class's other keyword arguments (``gpubptt.train``'s ``optimizer_options``)."""
    check_choice("optimizer", name, OPTIMIZERS)
    known = [a for a in inspect.signature(CLASSES[name]).parameters if a not in ("params", "lr", "backend")]
    unknown = [a for a in options if a not in known]
    if unknown:
        raise ValueError(f"optimizer_options: optimizer={name!r} takes {', '.join(known)}; "
                         f"got {', '.join(map(repr, unknown))}")
    return CLASSES[name](params, lr=DEFAULT_LR[name] if lr is None else lr, backend=backend, **options)
