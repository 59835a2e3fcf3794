"""The trainer: ``gpubptt.train(model, task_or_batches, steps, ...)`` and text sampling.

One *step* is one optimizer update. A batch of sequences x [T,B,D] is cut for truncated BPTT after
Williams & Peng, TBPTT(k1, k2): every k1 steps of the sequence, backpropagate through the last k2
(k2 >= k1) steps, the loss covering the k1 new steps. Each such window is a step:

    window [start, end) = [max(0, e - k2), e) for e = k1, 2·k1, ..., T (the last e is T)
    L, grads, state = bptt(x[start:end], d[start:end], s0=state at start, loss_steps=e - e_prev,
                           return_state=True, state_step=(start of the next window) - start)
    optimizer.step(grads, clip_norm, clip_value)

so the state flows forward across windows while the gradient stops at each window's start. With
k1 = k2 = T (the default, ``tbptt=None``) there is one window per batch: full BPTT, exactly. For a
task whose loss is at the last step only (``adding``), the windows before the last have nothing to
learn from: the state is carried through them by ``forward`` and only the last window is a step.
A batch of sequences of their own lengths runs the windows of the 'all' plan, each with the
lengths and per-sequence loss steps of ``window_lengths``: a window without a step in the loss only
carries the state forward, and the batch ends once every sequence has ended.

Everything a run needs to continue goes into the checkpoint (``gpubptt.checkpoint``): parameters,
optimizer state, the data generator's state at the start of the current batch, the window reached
and the carried state. ``resume=True`` continues from it, so on the ``cpu`` backend an interrupted
run, resumed with as many Numba threads, ends bit-identical to one that was never interrupted (with
another thread count, equal to rounding: the threads sum their shares of the batch apart). Ctrl-C
(SIGINT) stops after the current step, saves a checkpoint and returns with ``interrupted=True``; a
second Ctrl-C aborts at once.

On the ``cuda`` backend with a GPU the model's parameters are moved to the GPU (``model.to_device()``)
and each batch is moved there once when it is drawn; the test set once per run. Losses and norms
stay on the GPU until they are logged (every ``log_every`` steps).
"""
import json
import os
import signal
import threading
import warnings
from collections import namedtuple
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from . import checkpoint as ckpt
from .arrays import (NonFiniteError, check_bool, check_choice, check_int, check_per_sequence, check_type,
                     is_device_array, to_device, to_host, xp_of)
from .backend import resolve
from .clipping import check_threshold
from .losses import LOSSES
from .model import RNN
from .optim import OPTIMIZERS, Optimizer, make_optimizer
from .report import Clock, MetricsLog, Progress, finite_or_none, plot
from .tasks import TASKS, Task, encode, make_task, one_hot, task_from_config

DEFAULT_BATCH_SIZE = 32  # sequences per batch drawn from a task
METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "training.png"


@dataclass
class TrainResult:
    """What ``train`` did. ``steps``: optimizer steps done in all (a resumed run counts the earlier
    ones); ``resumed_from``: the step a resumed run started at (0 otherwise; a run resumed at its
    total trains nothing and writes nothing); ``loss``/``grad_norm``: of the last step;
    ``skipped``: steps skipped for non-finite gradients; ``ran_out``: where one-shot batches (a
    generator) ended before ``steps``, the run ending there (None if they did not);
    ``test``/``baseline``: the last test metrics and the task's baseline (None without a task);
    ``checkpoint``/``plot``: the run's files (None if none); ``note``: why a plot is missing;
    ``interrupted``: stopped by Ctrl-C; ``out``: the run directory; ``seconds``: this call's time;
    ``history``: the records logged (per step: loss, grad_norm, applied, elapsed; per evaluation: test)."""

    steps: int
    resumed_from: int = 0
    loss: float = None
    grad_norm: float = None
    skipped: int = 0
    interrupted: bool = False
    ran_out: str = None
    test: dict = None
    baseline: dict = None
    out: str = None
    checkpoint: str = None
    plot: str = None
    note: str = None
    seconds: float = 0.0
    history: list = field(default_factory=list, repr=False)


def check_tbptt(tbptt):
    """None (full BPTT) or a pair (k1, k2) of positive integers with k2 >= k1."""
    if tbptt is None:
        return None
    if not isinstance(tbptt, (tuple, list)) or len(tbptt) != 2:
        raise TypeError(f"tbptt: expected a pair (k1, k2) or None, got {tbptt!r}")
    k1, k2 = check_int("tbptt k1", tbptt[0]), check_int("tbptt k2", tbptt[1])
    if k2 < k1:
        raise ValueError(f"tbptt: k2 (steps backpropagated) must be >= k1 (steps between updates), got k1={k1}, k2={k2}")
    return k1, k2


def tbptt_windows(T, tbptt, loss_steps):
    """The windows of one batch of length T: a list of (start, end, loss_k, next_start).

    The window backpropagates through [start, end) with the loss on its last loss_k steps and hands
    the state at next_start to the next window; loss_k = 0 marks a stretch without loss, which is
    only run forward from start to next_start. loss_steps: 'all' or 'last' (the task's).
    """
    k1, k2 = tbptt if tbptt is not None else (T, T)
    ends = list(range(k1, T, k1)) + [T]
    windows = []
    for i, e in enumerate(ends):
        prev = ends[i - 1] if i else 0
        start = max(0, e - k2)
        next_start = max(0, ends[i + 1] - k2) if i + 1 < len(ends) else None
        loss_k = (e - prev) if loss_steps == "all" else (1 if e == T else 0)
        windows.append((start, e, loss_k, next_start))
    merged = []  # consecutive forward-only stretches become one
    for w in windows:
        if w[2] == 0 and merged and merged[-1][2] == 0:
            merged[-1] = (merged[-1][0], w[1], 0, w[3])
        else:
            merged.append(w)
    return [w for w in merged if not (w[2] == 0 and w[3] == w[0])]  # forward-only over nothing


def window_lengths(lengths, start, end, new, loss_steps):
    """(lengths, loss_steps) [B] for bptt over the TBPTT window [start, end) of a batch of sequences of
    their own ``lengths``, the window's last ``new`` steps being those no window before it had: each
    sequence's steps in the window (at least 1: one that ended before the window runs a step there,
    outside the loss), and how many of the last of them are in the loss: its steps among the new ones
    (``loss_steps`` 'all'), or its last step where that is one of them ('last')."""
    W = end - start
    inside = np.clip(lengths - start, 0, W)
    if loss_steps == "all":
        steps = np.maximum(inside - (W - new), 0)
    else:
        steps = (lengths - 1 >= end - new) & (lengths - 1 < end)
    return np.maximum(inside, 1).astype(np.int32), steps.astype(np.int32)


def build_model(config, seed=None, backend="auto"):
    """An ``RNN`` from ``RNN.config()`` output."""
    return RNN(seed=seed, backend=backend, **config)


class _Window:
    """Runs one TBPTT window through the model: bptt with ``loss_steps=k`` (the window's new steps),
    ``clip_step`` and ``return_state``/``state_step`` (the state where the next window starts)."""

    def __init__(self, model, loss, clip_step):
        self.model = model
        self.loss = loss
        self.clip_step = clip_step

    def bptt(self, x, d, s0, loss_k, state_step, lengths=None):
        """(L, grads, state after state_step steps of x from s0; None when state_step is None).
        ``lengths``: the sequences' lengths in the window; ``loss_k`` an int, or one per sequence."""
        loss_steps = loss_k if isinstance(loss_k, np.ndarray) or loss_k != x.shape[0] else "all"
        kwargs = dict(s0=s0, loss=self.loss, loss_steps=loss_steps, clip_step=self.clip_step)
        if lengths is not None:
            kwargs["lengths"] = lengths
        if not state_step:  # the batch's last window (None), or the next one starts where this one does (0)
            L, grads = self.model.bptt(x, d, **kwargs)
            return L, grads, (None if state_step is None else s0)
        return self.model.bptt(x, d, return_state=True, state_step=state_step, **kwargs)

    def forward(self, x, s0):
        """(Y, state after the last step of x)."""
        Y, _, state = self.model.forward(x, s0, return_state=True)
        return Y, state

    def advance(self, x, s0):
        """The state after running x forward from s0 (s0 itself for an empty x)."""
        return s0 if x.shape[0] == 0 else self.forward(x, s0)[1]


class _TaskData:
    def __init__(self, task, batch_size, seed):
        self.task = task
        self.batch_size = batch_size
        self.rng = np.random.default_rng([seed, 1])  # the model's initialisation uses seed itself

    def get_state(self):
        return {"rng": self.rng.bit_generator.state}

    def set_state(self, state):
        self.rng.bit_generator.state = state["rng"]

    def next(self):
        return (*self.task.batch(self.rng, self.batch_size), None)  # (x, d, lengths) as a list's


class _ListData:
    """A list of batches, used in turn."""

    def __init__(self, batches):
        self.batches = [_check_batch(b, f"task_or_batches[{i}]") for i, b in enumerate(batches)]
        xp_of({f"task_or_batches[{i}][{j}]": a for i, b in enumerate(self.batches) for j, a in enumerate(b[:2])})
        self.index = 0
        self.first = self.batches[0]

    def get_state(self):
        return {"index": self.index}

    def set_state(self, state):
        self.index = int(state["index"])

    def next(self):
        b = self.batches[self.index % len(self.batches)]
        self.index += 1
        return b

    def name(self):
        """The last batch drawn, as error messages call it."""
        return f"task_or_batches[{(self.index - 1) % len(self.batches)}]"


class BatchesRanOut(Exception):
    """A one-shot iterator of batches ended before the run's last step."""


class _StreamData:
    """Batches from an iterable that is not a list, read as they come: one whose ``iter()`` starts
    afresh (a DataLoader, a tuple-producing class) is read again when it ends, pass after pass; a
    one-shot iterator (a generator) that ends raises BatchesRanOut. ``index`` counts the batches
    drawn; a resumed run reads the iterable from its start and skips that many."""

    def __init__(self, source):
        self.source = source
        self.iterator = iter(source)
        self.one_shot = self.iterator is source
        self.index = 0
        raw = self._read()
        if raw is None:
            raise ValueError("task_or_batches: the iterable holds no batch")
        self.first = _check_batch(raw, self._name(0))  # drawn ahead: the loss's default reads its d

    def _read(self):
        """The next raw batch, starting the iterable again at its end (None: there is none)."""
        try:
            return next(self.iterator)
        except StopIteration:
            if self.one_shot:
                return None
        self.iterator = iter(self.source)
        return next(self.iterator, None)

    def get_state(self):
        return {"index": self.index}

    def set_state(self, state):
        """Skip to batch ``state['index']`` (called once, before any batch is drawn)."""
        for _ in range(int(state["index"])):
            self.next(check=False)

    def next(self, check=True):
        if self.index == 0:  # drawn and checked ahead
            self.index = 1
            return self.first
        raw = self._read()
        if raw is None:
            raise BatchesRanOut(f"task_or_batches ran out after {self.index} batches")
        self.index += 1
        return _check_batch(raw, self.name()) if check else raw

    def name(self):
        return self._name(self.index - 1)

    @staticmethod
    def _name(i):
        return f"task_or_batches' batch {i}"


def _batch_data(batches):
    """The data source for ``train``'s batches: a list (or tuple) used in turn, or another iterable."""
    if isinstance(batches, (str, bytes, Mapping, np.ndarray)) or is_device_array(batches) \
            or not isinstance(batches, Iterable) or isinstance(batches, Sequence) and not batches:
        raise TypeError(f"task_or_batches: expected a task name ({', '.join(TASKS)}), a Task, or a non-empty "
                        f"list (or other iterable) of (x, d) or (x, d, lengths) batches, got {type(batches).__name__}")
    return _ListData(batches) if isinstance(batches, Sequence) else _StreamData(batches)


def _check_batch(b, name):
    """One batch as (x, d, lengths or None), lengths as a NumPy array (bptt reads them on the host: the
    loss's mean sequence length for the log comes from them with no device transfer). The rest is
    bptt's to check, at the batch's step."""
    if not isinstance(b, (tuple, list)) or len(b) not in (2, 3):
        got = f"a {type(b).__name__} of {len(b)}" if isinstance(b, (tuple, list)) else type(b).__name__
        raise TypeError(f"{name}: expected a pair (x, d) or a triple (x, d, lengths), got {got}")
    for j, what in enumerate(("x", "d")):
        check_type(f"{name}: {what}", b[j])
    if len(b) == 2 or b[2] is None:
        return b[0], b[1], None
    try:
        lengths = np.asarray(to_host(b[2]))
    except ValueError:  # a ragged list
        raise ValueError(f"{name}: lengths: expected one integer per sequence [B], got {b[2]!r}") from None
    return b[0], b[1], lengths


def _carry_to_arrays(state):
    """The carried state as a list of arrays (a tuple for LSTM's (h, c)) and its structure name."""
    if state is None:
        return [], "none"
    if isinstance(state, tuple):
        return [to_host(a) for a in state], "tuple"
    return [to_host(state)], "array"


def _carry_from_arrays(arrays, kind, xp):
    if kind == "none":
        return None
    arrays = [xp.asarray(a) for a in arrays]
    return tuple(arrays) if kind == "tuple" else arrays[0]


class Trainer:
    """One training run; ``train()`` builds it and calls ``run()``. Attributes are the run's state."""

    def __init__(self, model, task_or_batches, steps, batch_size=None, optimizer="adam", lr=None,
                 optimizer_options=None, clip_norm=None, clip_value=None, clip_step=None, tbptt=None, loss=None,
                 loss_steps=None, seed=None, out=None, resume=False, checkpoint_every=None, eval_every=None,
                 log_every=10, progress=True, callback=None):
        if not isinstance(model, RNN):
            raise TypeError(f"model: expected a gpubptt.RNN, got {type(model).__name__}")
        self.model = model
        self.total = check_int("steps", steps)
        own = not isinstance(task_or_batches, (str, Task))  # one's own batches: a task's settings do not apply
        for name, value, why in (("batch_size", batch_size, "one's own batches come as they are"),
                                 ("seed", seed, "one's own batches are drawn by no generator of ours (the model "
                                                "carries its own initialisation)"),
                                 ("eval_every", eval_every, "one's own batches have no test set (evaluate in a "
                                                            "callback)")):
            if own and value is not None:
                raise ValueError(f"{name}: applies to a task's batches; {why}, got {name}={value!r}")
        self.batch_size = check_int("batch_size", DEFAULT_BATCH_SIZE if batch_size is None else batch_size)
        self.clip_norm = check_threshold("clip_norm", clip_norm)
        self.clip_value = check_threshold("clip_value", clip_value)
        self.clip_step = check_threshold("clip_step", clip_step)
        self.tbptt = check_tbptt(tbptt)
        if self.tbptt and model.bidirectional:
            raise ValueError(f"tbptt: a bidirectional model reads each sequence whole (its reverse direction starts "
                             f"at the end), got tbptt={self.tbptt} for a bidirectional model")
        self.seed = check_int("seed", 0 if seed is None else seed, low=0)
        self.progress_enabled = check_bool("progress", progress)
        check_bool("resume", resume)
        if callback is not None and not callable(callback):
            raise TypeError(f"callback: expected a function of (step, trainer) or None, got {callback!r}")
        self.checkpoint_every = check_int("checkpoint_every", checkpoint_every, allow_none=True)
        self.eval_every = check_int("eval_every", eval_every, allow_none=True)
        self.log_every = check_int("log_every", log_every)
        self.callback = callback
        self.out = None if out is None else ckpt.check_directory("out", out, writable=True)
        if resume and out is None:
            raise ValueError("resume: needs out, the directory that holds the checkpoint")
        if self.out is not None:
            self._check_out(resume)
        dtype = np.dtype(next(iter(model.params.values())).dtype)

        # the data: a task (by name or object) or a list of batches
        if isinstance(task_or_batches, str):
            task_or_batches = make_task(task_or_batches, dtype=dtype)
        if isinstance(task_or_batches, Task):
            self.task = task_or_batches
            self._check_task_fits()
            self.loss, self.loss_steps = self.task.loss, self.task.loss_steps
            if loss is not None and loss != self.loss:
                raise ValueError(f"loss: the {self.task.name} task trains with {self.loss!r}, got loss={loss!r}")
            if loss_steps is not None and loss_steps != self.loss_steps:
                raise ValueError(f"loss_steps: the {self.task.name} task puts its loss on {self.loss_steps!r} steps, "
                                 f"got loss_steps={loss_steps!r}")
            self.data = _TaskData(self.task, self.batch_size, self.seed)
        else:
            self.task = None
            self.data = _batch_data(task_or_batches)
            if loss is None:
                loss = "cross_entropy" if self.data.first[1].dtype.kind in "iu" else "squared"
            self.loss = check_choice("loss", loss, LOSSES)
            self.loss_steps = "all" if loss_steps is None else check_choice("loss_steps", loss_steps, ("all", "last"))

        # the backend, the model's and the data's device, the optimizer
        named = {f"model.params[{k!r}]": v for k, v in model.params.items()}
        self.be = resolve(model.backend, on_device=xp_of(named) is not np)
        if self.be.name == "cuda" and self.be.xp is not np:
            model.to_device()
            if isinstance(self.data, _ListData):
                self.data.batches = [(to_device(x), to_device(d), lengths) for x, d, lengths in self.data.batches]
        self.xp = self.be.xp
        # None: the optimizer's own (on resume, the checkpoint's); an Optimizer handed in keeps its own
        self.lr = optimizer.lr if isinstance(optimizer, Optimizer) else lr
        if isinstance(optimizer, Optimizer):
            if optimizer.params is not model.params:
                raise ValueError("optimizer: was made for other parameters than model.params")
            for key, value in (("lr", lr), ("optimizer_options", optimizer_options)):
                if value is not None:  # the optimizer carries its own: a value here would be ignored
                    raise ValueError(f"{key}: set when an Optimizer is made; with "
                                     f"optimizer={type(optimizer).__name__}(...) pass lr and options to it, "
                                     f"got {key}={value!r}")
            self.optimizer = optimizer
        else:
            check_choice("optimizer", optimizer, OPTIMIZERS)
            expected = "optimizer_options: expected a dict of keyword arguments (names as strings) or None, got"
            if optimizer_options is not None and not isinstance(optimizer_options, Mapping):
                raise TypeError(f"{expected} {type(optimizer_options).__name__}")
            if optimizer_options and not all(isinstance(k, str) for k in optimizer_options):
                raise TypeError(f"{expected} the keys {list(optimizer_options)}")
            self.optimizer = make_optimizer(optimizer, model.params, lr, backend=model.backend,
                                            **(optimizer_options or {}))
        self.window_runner = _Window(model, self.loss, self.clip_step)

        # where the run stands
        self.step = 0
        self.batch = None  # (x, d, lengths or None), x and d on the compute device, with its plan
        self.plan = None
        self.window = 0
        self.carry = None
        self.batch_state = None  # the data source's state before the current batch was drawn
        self.records = []
        self.pending = []
        self.test = None
        self.stop_requested = False
        if resume:
            self._resume()
        if self.out is not None:
            ckpt.check_directory("out", self.out, create=True)  # only now: bad arguments leave no directory
            self.log = MetricsLog(os.path.join(self.out, METRICS_FILE), fresh=not resume)
            if resume:
                self.log.keep_until(self.step)
        else:
            self.log = None

    # -- setup ---------------------------------------------------------------------------------

    def _check_out(self, resume):
        """The run's files in ``out`` can be written, and a new run overwrites none of another's."""
        files = (ckpt.FILENAME, METRICS_FILE, PLOT_FILE)
        for f in files:
            if os.path.isdir(os.path.join(self.out, f)):
                raise ValueError(f"out: {os.path.join(self.out, f)} is a directory, where the run writes its {f}")
        if resume:
            return
        if ckpt.exists(self.out):
            raise ValueError(f"out: {self.out} already holds a checkpoint; pass resume=True (--resume) to continue "
                             "it, or choose another directory")
        held = [f for f in files if os.path.isfile(os.path.join(self.out, f))
                and not (f == METRICS_FILE and os.path.getsize(os.path.join(self.out, f)) == 0)]
        if held:
            raise ValueError(f"out: {self.out} already holds {' and '.join(held)} (with no checkpoint to resume); a "
                             "new run would overwrite them: choose another directory, or remove them first")

    def _check_task_fits(self):
        t, m = self.task, self.model
        dtype = np.dtype(next(iter(m.params.values())).dtype)
        for what, need, have in (("input_size", t.input_size, m.input_size),
                                 ("output_size", t.output_size, m.output_size),
                                 ("output_activation", t.output_activation, m.output_activation)):
            if need != have:
                raise ValueError(f"model.{what}: the {t.name} task needs {need!r}, got {have!r}")
        if t.dtype != dtype:
            raise TypeError(f"task: generates {t.dtype} data but the model's parameters are {dtype}")

    def config(self):
        return {
            "steps": self.total, "batch_size": self.batch_size, "tbptt": list(self.tbptt) if self.tbptt else None,
            "seed": self.seed,
            "loss": self.loss, "loss_steps": self.loss_steps, "clip_norm": self.clip_norm,
            "clip_value": self.clip_value, "clip_step": self.clip_step,
        }

    def _resume(self):
        arrays, meta = ckpt.load_run(self.out)
        where = ckpt.path_in(self.out)

        def mismatch(what, saved, have):
            raise ckpt.CheckpointError(f"checkpoint {where} was written for {what}={saved!r}, got {what}={have!r}")

        defaults = {"num_layers": 1, "bidirectional": False}
        have_config = {**defaults, **self.model.config()}
        for key, saved in {**defaults, **meta["model"]}.items():
            if have_config.get(key) != saved:
                mismatch(f"model {key}", saved, have_config.get(key))
        saved_keys = sorted(k[len("param/"):] for k in arrays if k.startswith("param/"))
        if saved_keys != sorted(self.model.params):
            mismatch("parameter keys", saved_keys, sorted(self.model.params))
        for k, p in self.model.params.items():
            if arrays[f"param/{k}"].shape != tuple(p.shape):
                mismatch(f"params[{k!r}] shape", arrays[f"param/{k}"].shape, tuple(p.shape))
        task_config = self.task.config() if self.task else None
        if meta["task"] != task_config:
            mismatch("task", meta["task"], task_config)
        if meta["optimizer"]["name"] != self.optimizer.name:
            mismatch("optimizer", meta["optimizer"]["name"], self.optimizer.name)
        for key, saved in meta["optimizer"]["hyper"].items():  # the learning rate alone may change
            have = json.loads(json.dumps(self.optimizer.hyper.get(key)))  # (tuples as the checkpoint's lists)
            if key != "lr" and have != saved:
                mismatch(f"optimizer {key}", saved, have)
        for key in ("batch_size", "tbptt", "seed", "loss", "loss_steps"):
            if meta["train"][key] != self.config()[key]:
                mismatch(key, meta["train"][key], self.config()[key])
        if self.total < int(meta["step"]):
            raise ValueError(f"steps: the checkpoint {where} is at step {meta['step']}; a resumed run goes on to "
                             f"steps (--steps) in all, so it takes {meta['step']} or more, got {self.total}")
        # the data where the checkpoint left it (an iterable that holds fewer batches is refused here,
        # before anything is loaded)
        pos = meta["position"]
        try:
            self.data.set_state(pos["data"])
            if pos["in_batch"]:
                self._draw_batch()
        except BatchesRanOut as e:
            raise ValueError(f"{e} while skipping the batches the checkpoint {where} has used (a resumed run reads "
                             "it from its start)") from None
        # everything fits: load (nothing above wrote anything but this trainer's own state)
        state = dict(meta["optimizer"])
        state["optimizer"] = state.pop("name")
        state["buffers"] = {}
        for k, v in arrays.items():
            if k.startswith("optim/"):
                _, b, key = k.split("/", 2)
                state["buffers"].setdefault(b, {})[key] = v
        self.optimizer.load_state_dict(state)  # its lr too: the checkpoint's, unless this call gives one
        if self.lr is not None:
            self.optimizer.lr = self.lr
        xp = self.xp
        for k, p in self.model.params.items():
            p[...] = xp.asarray(arrays[f"param/{k}"])
        self.step = int(meta["step"])
        if pos["in_batch"]:
            self.window = int(pos["window"])
            carried = [arrays[f"carry/{i}"] for i in range(pos["carry_len"])]
            self.carry = _carry_from_arrays(carried, pos["carry"], xp)

    # -- the loop ------------------------------------------------------------------------------

    def _draw_batch(self):
        self.batch_state = self.data.get_state()
        x, d, lengths = self.data.next()
        self.batch = (self.xp.asarray(x), self.xp.asarray(d), lengths) if self.xp is not np else (x, d, lengths)
        # with lengths, a sequence's last step may lie in any window: each window's own steps decide
        windowed = self.tbptt and lengths is not None
        self.plan = tbptt_windows(x.shape[0], self.tbptt, "all" if windowed else self.loss_steps)
        self.window = 0
        self.carry = None

    def _one_step(self):
        """Run windows until one optimizer step is done."""
        while True:
            if self.batch is None:
                self._draw_batch()
            start, end, loss_k, next_start = self.plan[self.window]
            x, d, lengths = self.batch
            state_step = None if next_start is None else next_start - start
            try:
                if self.tbptt and lengths is not None:
                    T, B = x.shape[:2]
                    lengths = check_per_sequence("lengths", lengths, B, 1, T + 1)
                    # every sequence ended before the window's new steps: no loss here or later, the batch is done
                    if lengths.max() <= end - loss_k:
                        self._next_window(None)
                        continue
                    lengths, loss_k = window_lengths(lengths, start, end, loss_k, self.loss_steps)
                    loss_k = loss_k if loss_k.any() else 0  # no sequence has a step of this window in the loss
                if not np.any(loss_k):
                    self.carry = self.window_runner.advance(x[start:next_start], self.carry)
                    self._next_window(next_start)
                    continue
                L, grads, state = self.window_runner.bptt(x[start:end], d[start:end], self.carry, loss_k,
                                                          state_step, lengths)
            except (ValueError, TypeError) as e:  # the checks, before any kernel: nothing has changed
                self._raise_if_model_error(e)
                if isinstance(self.data, _TaskData):
                    raise
                raise type(e)(f"{self.data.name()} (at step {self.step + 1}): {e}") from None
            info = self.optimizer.step(grads, clip_norm=self.clip_norm, clip_value=self.clip_value)
            self.step += 1
            # the log's loss: per step in the loss (with lengths: of the mean length, in a window the mean
            # steps in the loss; 'last': one a sequence, in a window those whose last step it holds)
            if isinstance(loss_k, np.ndarray):
                per = float(loss_k.mean())
            else:
                per = loss_k if lengths is None or self.loss_steps == "last" else float(lengths.mean())
            self.pending.append((self.step, L, per, info, self.clock.elapsed()))
            self.carry = state
            self._next_window(next_start)
            return

    def _next_window(self, next_start):
        """On to the plan's next window; None: the batch is done."""
        self.window = self.window + 1 if next_start is not None else len(self.plan)
        if self.window == len(self.plan):
            self.batch, self.plan, self.carry = None, None, None

    def _flush(self):
        """Read the pending losses and norms from the device (one transfer) and log them."""
        if not self.pending:
            return
        xp = self.xp
        values = to_host(xp.stack([xp.stack([xp.asarray(L, dtype=np.float64) / k, info.norm,
                                             xp.asarray(info.applied, dtype=np.float64)])
                                   for _, L, k, info, _ in self.pending]))
        new = [{"step": s, "loss": finite_or_none(v[0]), "grad_norm": finite_or_none(v[1]), "applied": bool(v[2]),
                "elapsed": round(t, 4)}
               for (s, _, _, _, t), v in zip(self.pending, values)]
        self.pending = []
        self.records.extend(new)
        if self.log:
            self.log.write(new)
        self.skipped = int(to_host(self.optimizer.counters)[1])
        done = self.step - self.first_step
        rate = done / max(self.clock.elapsed(), 1e-9)
        last = new[-1]
        self.progress.update(self.step, last["loss"], last["grad_norm"], rate, self.skipped,
                             final=self.step >= self.total)

    def evaluate(self):
        """The task's metrics on its test set (None without a task)."""
        if self.task is None:
            return None
        if self.test is None:
            x, d = self.task.test_set()
            self.test = (self.xp.asarray(x), d) if self.xp is not np else (x, d)
        Y = self.model.forward(self.test[0])[0]
        return self.task.metrics(Y, self.test[1])

    def _raise_if_model_error(self, e):
        """A check's error about the parameters is the model's, not the data's; non-finite ones after
        an update of this run (its first step checked them) mean an update overflowed."""
        message = str(e)
        if not message.startswith("params["):
            return
        if isinstance(e, NonFiniteError) and self.step > self.first_step:
            raise self._diverged(f"model.{message}") from None
        raise type(e)(f"model.{message}") from None

    def _diverged(self, what):
        return FloatingPointError(f"the run diverged: after the update of step {self.step}, {what} (the update "
                                  "overflowed); lower lr, or bound the updates with clip_norm or clip_value")

    def _check_params_finite(self):
        """At the end of a run: parameters its last update made non-finite raise (one transfer)."""
        xp = self.xp
        finite = to_host(xp.stack([xp.isfinite(p).all() for p in self.model.params.values()]))
        bad = [k for k, ok in zip(self.model.params, finite) if not ok]
        if bad:
            raise self._diverged(f"model.params[{bad[0]!r}]: contains NaN or Inf")

    def _evaluate_and_log(self):
        try:
            metrics = self.evaluate()
        except (ValueError, TypeError) as e:
            self._raise_if_model_error(e)
            raise
        if metrics is None:
            return
        self.last_test = metrics
        record = {"step": self.step, "test": {k: finite_or_none(v) for k, v in metrics.items()},
                  "baseline": self.task.baseline}
        self.records.append(record)
        if self.log:
            self.log.write([record])
        shown = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items())
        base = ", ".join(f"{k} {v:.4g}" for k, v in self.task.baseline.items())
        self.progress.message(f"step {self.step}: test {shown} (baseline {base})")

    def save(self):
        """Write the checkpoint (atomically); returns its path, or None without ``out``."""
        if self.out is None:
            return None
        arrays = {f"param/{k}": to_host(v) for k, v in self.model.params.items()}
        state = self.optimizer.state_dict()
        for b, per_key in state.pop("buffers").items():
            for k, v in per_key.items():
                arrays[f"optim/{b}/{k}"] = v
        in_batch = self.batch is not None
        carried, kind = _carry_to_arrays(self.carry if in_batch else None)
        for i, a in enumerate(carried):
            arrays[f"carry/{i}"] = a
        meta = {
            "step": self.step,
            "model": self.model.config(),
            "task": self.task.config() if self.task else None,
            "optimizer": {"name": state.pop("optimizer"), **state},
            "train": self.config(),
            "position": {"in_batch": in_batch, "window": self.window if in_batch else 0,
                         "data": self.batch_state if in_batch else self.data.get_state(),
                         "carry": kind, "carry_len": len(carried)},
        }
        return ckpt.save(self.out, arrays, meta)

    def _on_sigint(self, signum, frame):
        self.stop_requested = True
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C aborts at once

    def run(self):
        self.clock = Clock()
        self.first_step = self.step
        self.skipped = self.optimizer.skipped
        self.last_test = None
        self.progress = Progress(self.total, enabled=bool(self.progress_enabled))
        handler_installed = threading.current_thread() is threading.main_thread()
        if handler_installed:
            previous = signal.signal(signal.SIGINT, self._on_sigint)
        interrupted, ran_out = False, None
        path = None
        try:
            while self.step < self.total:
                try:
                    self._one_step()
                except BatchesRanOut as e:  # nothing of the step was done: end the run here
                    ran_out = f"{e}, at step {self.step} of {self.total}"
                    self.batch, self.plan, self.carry = None, None, None
                    break
                at = self.step
                last = at >= self.total
                evaluate = bool(self.eval_every) and at % self.eval_every == 0 and not last
                checkpoint = bool(self.checkpoint_every) and at % self.checkpoint_every == 0 and not last
                if self.stop_requested or last or evaluate or checkpoint or at % self.log_every == 0:
                    self._flush()
                if evaluate:
                    self._evaluate_and_log()
                if checkpoint:
                    path = self.save()
                if self.callback is not None:
                    self.callback(at, self)
                if self.stop_requested and not last:
                    interrupted = True
                    break
            self._flush()
            trained = self.step > self.first_step
            if trained:
                self._check_params_finite()
            if not trained:  # a finished run resumed: nothing new to log or save
                self.last_test = self.evaluate()
            elif not interrupted:
                self._evaluate_and_log()
            path = (self.save() if trained else self.out and ckpt.path_in(self.out)) or path
        finally:
            if handler_installed:
                signal.signal(signal.SIGINT, previous)
        if interrupted:
            self.progress.message(f"interrupted at step {self.step}" +
                                  (f"; checkpoint saved to {path}" if path else ""))
        if ran_out:
            self.progress.message(ran_out)
        plot_path, note = None, None
        if self.out is not None and not trained:  # nothing new to draw
            existing = os.path.join(self.out, PLOT_FILE)
            plot_path = existing if os.path.exists(existing) else None
        elif self.out is not None:
            records = self.log.read()
            m, h = self.model, self.optimizer.hyper
            title = (f"{self.task.name if self.task else 'batches'}: {m.cell} RNN, H={m.hidden_size}, "
                     f"{self.optimizer.name} lr={h['lr']:g}" + (f", clip norm {self.clip_norm:g}" if self.clip_norm else "")
                     + (f", TBPTT{self.tbptt}" if self.tbptt else ""))
            plot_path, note = plot(records, os.path.join(self.out, PLOT_FILE), title, self.clip_norm)
            if note:
                self.progress.message(note)
        steps_records = [r for r in self.records if "loss" in r]
        last = steps_records[-1] if steps_records else {}
        return TrainResult(
            steps=self.step, resumed_from=self.first_step, loss=last.get("loss"), grad_norm=last.get("grad_norm"),
            skipped=self.skipped, interrupted=interrupted, ran_out=ran_out, test=self.last_test,
            baseline=self.task.baseline if self.task else None,
            out=self.out, checkpoint=path, plot=plot_path, note=note, seconds=self.clock.elapsed(),
            history=self.records,
        )


def train(model, task_or_batches, steps, *, batch_size=None, optimizer="adam", lr=None, optimizer_options=None,
          clip_norm=None, clip_value=None, clip_step=None, tbptt=None, loss=None, loss_steps=None, seed=None, out=None,
          resume=False, checkpoint_every=None, eval_every=None, log_every=10, progress=True, callback=None):
    """Train ``model`` (a ``gpubptt.RNN``, its parameters updated in place) for ``steps`` optimizer steps.

    task_or_batches  a task name ('sine', 'adding', 'copy', 'text' needs a Task made with its file),
                     a ``gpubptt.tasks.Task``, or a list of (x [T,B,D], d) batches used in turn,
                     each also as (x, d, lengths [B]) for sequences of their own lengths (as in
                     ``bptt``; with tbptt, ``window_lengths``); or any other iterable of such
                     batches, read one per step as it comes (a DataLoader-like object is read
                     again when it ends; a generator that ends ends the run: ``ran_out``); a
                     resumed run reads it from the start and skips the batches already used
    batch_size       sequences per batch of a task (default DEFAULT_BATCH_SIZE; not with one's own batches)
    optimizer        'sgd', 'adam', 'adagrad' or an ``Optimizer`` made for ``model.params``;
                     lr None takes the optimizer's default (on resume, the checkpoint's lr);
                     optimizer_options e.g. {'momentum': 0.9}
                     (an Optimizer brings its own, and keeps its lr on resume: lr or
                     optimizer_options beside it is an error)
    clip_norm        global-norm clipping threshold; clip_value: element-wise [-c, c];
                     clip_step: per-time-step clipping inside BPTT (the seed article's)
    tbptt            (k1, k2): TBPTT(k1, k2) (module docstring); None: full BPTT over each batch
    loss             for a list of batches: 'squared' or 'cross_entropy' (default from d's dtype)
    loss_steps       for a list of batches: 'all' (default) or 'last', each sequence's last step alone
                     (many-to-one; d elsewhere is not read, as in ``bptt``); a task brings its own
    seed             the seed of a task's data generator (default 0; not with one's own batches: the model
                     carries its own initialisation)
    out              directory for checkpoint.npz, metrics.jsonl, training.png (None: nothing written); a
                     new run refuses one that holds another run's (resume, or remove them)
    resume           continue from the checkpoint in ``out`` (same model shape, task, data and optimizer
                     settings but the learning rate, which may change): the checkpoint's parameters
                     and optimizer state are loaded into ``model`` first;
                     ``steps`` counts the checkpoint's steps too (fewer than it has done: ValueError)
    checkpoint_every, eval_every, log_every   in steps; checkpoints and a test evaluation also at the end
    progress         show the progress bar on stderr
    callback         called as callback(step, trainer) after every step (trainer: the ``Trainer``, its
                     ``model``, ``optimizer``, ``records`` of the steps logged so far, ``step``)
    Returns a ``TrainResult``. Steps whose gradients are not finite are skipped (counted in ``skipped``);
    an update that makes the parameters non-finite raises FloatingPointError at the next step (or at
    the end, its checkpoint not written).
    """
    trainer = Trainer(model, task_or_batches, steps, batch_size=batch_size, optimizer=optimizer, lr=lr,
                      optimizer_options=optimizer_options, clip_norm=clip_norm, clip_value=clip_value,
                      clip_step=clip_step, tbptt=tbptt, loss=loss, loss_steps=loss_steps, seed=seed, out=out,
                      resume=resume, checkpoint_every=checkpoint_every, eval_every=eval_every, log_every=log_every,
                      progress=progress, callback=callback)
    return trainer.run()


Loaded = namedtuple("Loaded", "model task meta")


def load_model(directory, backend="auto"):
    """The model a ``train`` run (or ``gpubptt train``) checkpointed in ``directory``, or ``RNN.save``
    wrote there, to use from Python.

    Returns ``Loaded(model, task, meta)``: an ``RNN`` of the run's structure holding the checkpoint's
    parameters (on ``backend``); the task the run trained on, rebuilt from its configuration (None for
    a run on a list of batches), whose ``test_set()`` and ``metrics(Y, d)`` give the run's test
    figures again; and the checkpoint's metadata (``step``, the ``model``, ``task``, ``optimizer`` and
    ``train`` settings). The checkpoint is read, never changed; a missing or damaged one raises
    ``gpubptt.checkpoint.CheckpointError`` (a ValueError) naming the file. A text run's task needs its
    training text: where that file is gone or changed, the model still loads, with task None and a
    warning that says why.
    """
    model, meta = _load_trained(directory, backend)
    task = None
    if meta["task"]:
        try:
            task = task_from_config(meta["task"], dtype=model.params["Wy"].dtype)
        except ValueError as e:
            if meta["task"].get("name") != "text":
                raise
            warnings.warn(f"load_model: the run's text task cannot be rebuilt ({e}); the model is loaded without it "
                          "(task None)", stacklevel=2)
    return Loaded(model, task, meta)


def _load_trained(directory, backend):
    """(model holding the checkpoint's parameters, the checkpoint's metadata): ``load_model`` without the task."""
    arrays, meta = ckpt.load(directory, "directory")
    model = build_model(meta["model"], backend=backend)
    for k, p in model.params.items():
        saved = arrays.get(f"param/{k}")
        if saved is None or saved.shape != p.shape:
            raise ckpt.CheckpointError(f"checkpoint {ckpt.path_in(directory)}: params[{k!r}] is missing or misshapen")
        p[...] = saved
    return model, meta


def sample_text(directory, length=200, temperature=1.0, prime=None, seed=0, backend="auto"):
    """Generate ``length`` characters from the text model checkpointed in ``directory``.

    prime: text to run through the model first (its characters must be in the vocabulary; default
    one character drawn from the training text's frequencies, which reads the training text: with a
    prime the checkpoint alone is enough). Each next character is drawn from softmax(z / temperature),
    z the model's output before softmax. Returns the prime + the sample.
    """
    length = check_int("length", length)
    temperature = check_threshold("temperature", temperature, allow_none=False)
    seed = check_int("seed", seed, low=0)
    model, meta = _load_trained(directory, backend)
    if meta["task"] is None or meta["task"]["name"] != "text":
        what = (f"was trained on {meta['task']['name']}" if meta["task"] else "was trained on a list of batches"
                if "train" in meta else "holds a model saved by RNN.save, with no text task")
        raise ValueError(f"sample: the checkpoint in {directory} {what}; sampling needs a text model")
    if model.bidirectional:
        raise ValueError(f"sample: the model in {directory} is bidirectional; generating text needs a model that "
                         "reads left to right only")
    vocab, dtype = meta["task"]["vocab"], model.params["Wy"].dtype
    rng = np.random.default_rng(seed)
    if prime is None:
        try:
            train_codes = task_from_config(meta["task"], dtype=dtype).train_codes
        except ValueError as e:
            raise ValueError(f"{e} (the default prime is drawn from the training text's character frequencies; "
                             "give a prime to sample without it)") from None
        counts = np.bincount(train_codes, minlength=len(vocab))
        prime = vocab[rng.choice(len(vocab), p=counts / counts.sum())]
    if not isinstance(prime, str) or not prime:
        raise ValueError(f"prime: expected a non-empty string, got {prime!r}")
    unknown = sorted(set(prime) - set(vocab))
    if unknown:
        raise ValueError(f"prime: characters not in the model's vocabulary: {''.join(unknown)!r}")
    runner = _Window(model, "cross_entropy", None)
    state, out = None, list(prime)
    x = one_hot(encode(prime, {c: i for i, c in enumerate(vocab)}), len(vocab), dtype)[:, None, :]
    for _ in range(length):
        Y, state = runner.forward(x, state)
        Y = to_host(Y)[-1, 0].astype(np.float64)
        logits = np.log(np.maximum(Y, 1e-300)) / temperature
        p = np.exp(logits - logits.max())
        code = rng.choice(len(vocab), p=p / p.sum())
        out.append(vocab[code])
        x = one_hot(np.array([code]), len(vocab), dtype)[:, None, :]
    return "".join(out)
