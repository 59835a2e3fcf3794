"""``gpubptt train`` and ``gpubptt sample``: argument definitions and the glue to ``gpubptt.train``.

cli.py registers the subcommands and calls ``run_train``/``run_sample``; everything else is here.
Options left out take the defaults in ``DEFAULTS``, or, with ``--resume DIR``, the checkpoint's
values. Given with ``--resume``, options that define the model, the task, the data stream or the
optimizer (its momentum too) must agree with the checkpoint (an error names the difference); the
learning rate, the clipping thresholds (``off`` removes one), ``--steps`` (the total to reach), the
evaluation and checkpoint intervals and the backend may change. Errors in the options print
``gpubptt <command>: error: ...`` and exit with status 2; a run that diverges (an update overflows the
parameters) exits with status 1; an interrupted run (Ctrl-C) saves its checkpoint and exits with
status 130.
"""
import argparse
import os
import sys

import numpy as np

from .backend import BACKENDS
from .optim import DEFAULT_LR, OPTIMIZERS
from .report import option_error
from .tasks import TASKS

DEFAULTS = {
    "cell": "tanh", "hidden": 32, "layers": 1, "steps": 1000, "batch": 32, "optimizer": "adam", "seed": 0,
    "dtype": "float32", "backend": "auto", "checkpoint_every": 100, "log_every": 10,
}
MODEL_OPTIONS = {"cell": "cell", "hidden": "hidden_size", "layers": "num_layers", "dtype": "dtype"}
PYTHON_NAMES = {**MODEL_OPTIONS, "batch": "batch_size"}  # an option's value under another name in Python


def _cells():
    from .params import CELLS

    return CELLS


def add_train_arguments(p):
    p.add_argument("--task", choices=TASKS, help="built-in task (required unless --resume)")
    p.add_argument("--cell", choices=_cells(), help=f"recurrent cell g1 (default {DEFAULTS['cell']})")
    p.add_argument("--hidden", type=int, metavar="H", help=f"hidden size (default {DEFAULTS['hidden']})")
    p.add_argument("--layers", type=int, metavar="L", help="stacked layers (default 1)")
    p.add_argument("--steps", type=int, metavar="N", help=f"optimizer steps in all (default {DEFAULTS['steps']})")
    p.add_argument("--batch", type=int, metavar="B", help=f"sequences per batch (default {DEFAULTS['batch']})")
    p.add_argument("--lr", type=float, help="learning rate (default: " +
                   ", ".join(f"{k} {v:g}" for k, v in DEFAULT_LR.items()) + ")")
    p.add_argument("--optimizer", choices=OPTIMIZERS, help=f"default {DEFAULTS['optimizer']}")
    p.add_argument("--momentum", type=float, help="SGD momentum (default 0)")
    p.add_argument("--nesterov", action="store_true", default=None, help="SGD with Nesterov momentum")
    p.add_argument("--clip-norm", type=_clip_arg, metavar="C",
                   help="global-norm gradient clipping threshold, or off (to drop a checkpoint's on --resume)")
    p.add_argument("--clip-value", type=_clip_arg, metavar="C",
                   help="element-wise gradient clipping to [-C, C], or off")
    p.add_argument("--clip-step", type=_clip_arg, metavar="C", help="per-time-step clipping inside BPTT, or off")
    p.add_argument("--tbptt", type=int, nargs=2, metavar=("K1", "K2"),
                   help="truncated BPTT: update every K1 steps, backpropagating K2 >= K1 steps (a task with its loss "
                        "at the last step only: one update per batch; default: full BPTT)")
    p.add_argument("--backend", choices=BACKENDS, help="default auto")
    p.add_argument("--dtype", choices=("float32", "float64"), help="default float32")
    p.add_argument("--seed", type=int, help="seed of the initialisation and the data (default 0)")
    p.add_argument("--seq-len", type=int, metavar="T", help="sequence length (sine 50, adding 50, text 100)")
    p.add_argument("--delay", type=int,
                   help="copy task: the 'go' marker comes DELAY steps after the last symbol; T = DELAY + 20 (default 10)")
    p.add_argument("--text", metavar="FILE", help="text task: a UTF-8 text file")
    p.add_argument("--out", metavar="DIR", help="run directory for checkpoint, metrics, plot (default runs/TASK)")
    p.add_argument("--resume", metavar="DIR", help="continue the run whose checkpoint is in DIR")
    p.add_argument("--checkpoint-every", type=int, metavar="N", help="default 100 steps (and at the end)")
    p.add_argument("--eval-every", type=int, metavar="N", help="test evaluation every N steps (default steps/10)")
    p.add_argument("--log-every", type=int, metavar="N", help="metrics read back and logged every N steps (default 10)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


OFF = "off"  # a clipping option given as 'off': none, whatever a resumed checkpoint had


def _clip_arg(text):
    """argparse type: a number (checked by train) or 'off'."""
    if text == OFF:
        return OFF
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'off', got {text!r}") from None


def add_sample_arguments(p):
    p.add_argument("checkpoint", metavar="DIR", help="run directory of a text model (gpubptt train --task text)")
    p.add_argument("--length", type=int, default=200, help="characters to generate (default 200)")
    p.add_argument("--temperature", type=float, default=1.0, help="softmax temperature (default 1.0)")
    p.add_argument("--prime", help="text to start from (default: one character drawn from the training text's "
                                    "frequencies, which reads that file; with a prime the checkpoint is enough)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampling (default 0)")
    p.add_argument("--backend", choices=BACKENDS, default="auto")


class UsageError(ValueError):
    """Options that do not fit together."""


def _value(args, name, saved=None):
    v = getattr(args, name)
    if v is not None:
        return v
    return saved if saved is not None else DEFAULTS.get(name)


def _clip(args, name, saved):
    v = _value(args, name, saved.get(name))
    return None if v == OFF else v


def _fresh(args):
    from .model import RNN
    from .tasks import make_task

    if args.task is None:
        raise UsageError("--task: required (one of " + ", ".join(TASKS) + ") unless --resume DIR is given")
    dtype = np.dtype(_value(args, "dtype"))
    task = make_task(args.task, seq_len=args.seq_len, delay=args.delay, text=args.text, dtype=dtype)
    model = RNN(task.input_size, _value(args, "hidden"), task.output_size, cell=_value(args, "cell"),
                output_activation=task.output_activation, dtype=dtype, seed=_value(args, "seed"),
                backend=_value(args, "backend"), num_layers=_value(args, "layers"))
    out = args.out if args.out is not None else os.path.join("runs", args.task)
    return model, task, out, {}


def _shown(saved):
    """A checkpoint's setting as a conflict message gives it: 'none' for one it does not have."""
    return "none" if saved is None else saved


def _resumed(args):
    from . import checkpoint as ckpt
    from .tasks import task_from_config
    from .training import build_model

    if not args.resume:
        raise UsageError("--resume: expected the run directory to continue, got ''")
    _, meta = ckpt.load_run(args.resume)
    if args.out is not None and os.path.realpath(args.out) != os.path.realpath(args.resume):
        raise UsageError(f"--out: a resumed run writes to its own directory {args.resume}, got --out {args.out}")
    saved_model, saved_task, saved_train = meta["model"], meta["task"], meta["train"]
    if saved_task is None:
        raise UsageError(f"--resume: {args.resume} holds a run trained on a list of batches, not a task; "
                         "continue it with gpubptt.train(..., resume=True)")
    conflicts = []
    for opt, key in MODEL_OPTIONS.items():
        given = getattr(args, opt)
        saved = saved_model.get(key, 1 if key == "num_layers" else None)
        if given is not None and given != saved:
            conflicts.append(f"--{opt} {given} (the checkpoint has {_shown(saved)})")
    hyper = meta["optimizer"]["hyper"]
    for opt, saved in (("task", saved_task["name"]), ("seq_len", saved_task["seq_len"]),
                       ("delay", saved_task.get("delay")), ("batch", saved_train["batch_size"]),
                       ("seed", saved_train["seed"]), ("optimizer", meta["optimizer"]["name"]),
                       ("momentum", hyper.get("momentum")), ("nesterov", hyper.get("nesterov"))):
        given = getattr(args, opt)
        if given is not None and given != saved:
            conflicts.append(f"--{opt.replace('_', '-')} {given} (the checkpoint has {_shown(saved)})")
    if args.text is not None and os.path.abspath(args.text) != saved_task.get("path"):
        conflicts.append(f"--text {args.text} (the checkpoint has {saved_task.get('path')})")
    tbptt = saved_train["tbptt"]
    if args.tbptt is not None and list(args.tbptt) != tbptt:
        saved = " ".join(map(str, tbptt)) if tbptt else "none: full BPTT"
        conflicts.append(f"--tbptt {' '.join(map(str, args.tbptt))} (the checkpoint has {saved})")
    if conflicts:
        raise UsageError(f"--resume {args.resume}: options differ from the checkpoint: {'; '.join(conflicts)}")
    model = build_model(saved_model, backend=_value(args, "backend"))
    task = task_from_config(saved_task, dtype=np.dtype(saved_model["dtype"]))
    saved = {
        "batch": saved_train["batch_size"], "seed": saved_train["seed"], "tbptt": tbptt,
        "optimizer": meta["optimizer"]["name"], "lr": meta["optimizer"]["hyper"]["lr"],
        "clip_norm": saved_train["clip_norm"], "clip_value": saved_train["clip_value"],
        "clip_step": saved_train["clip_step"], "steps": saved_train.get("steps"),
        "momentum": meta["optimizer"]["hyper"].get("momentum"), "nesterov": meta["optimizer"]["hyper"].get("nesterov"),
    }
    return model, task, args.resume, saved


def run_train(args):
    from .training import train

    try:
        model, task, out, saved = _resumed(args) if args.resume is not None else _fresh(args)
        steps = _value(args, "steps", saved.get("steps"))
        optimizer = _value(args, "optimizer", saved.get("optimizer"))
        momentum = _value(args, "momentum", saved.get("momentum"))
        nesterov = bool(args.nesterov or saved.get("nesterov"))
        if optimizer == "sgd":
            options = {"momentum": momentum or 0.0, "nesterov": nesterov}
        elif args.momentum is not None or args.nesterov:
            raise UsageError(f"--momentum/--nesterov: apply to --optimizer sgd only, got --optimizer {optimizer}")
        else:
            options = {}
        tbptt = _value(args, "tbptt", saved.get("tbptt"))
        eval_every = args.eval_every if args.eval_every is not None else max(1, steps // 10)
        print(f"gpubptt train: {task.describe()}; {model!r}", file=sys.stderr)
        result = train(
            model, task, steps, batch_size=_value(args, "batch", saved.get("batch")), optimizer=optimizer,
            lr=_value(args, "lr", saved.get("lr")), optimizer_options=options,
            clip_norm=_clip(args, "clip_norm", saved), clip_value=_clip(args, "clip_value", saved),
            clip_step=_clip(args, "clip_step", saved),
            tbptt=tuple(tbptt) if tbptt else None, seed=_value(args, "seed", saved.get("seed")), out=out,
            resume=args.resume is not None, checkpoint_every=_value(args, "checkpoint_every"),
            eval_every=eval_every, log_every=_value(args, "log_every"), progress=not args.quiet,
        )
    except (ValueError, TypeError) as e:
        option_error("train", e, args, PYTHON_NAMES)
        return 2
    except FloatingPointError as e:  # the options were fine; the run diverged
        print(f"gpubptt train: error: {e}", file=sys.stderr)
        return 1
    done = result.steps - result.resumed_from
    if not done:
        summary = f"nothing to train: the checkpoint is at step {result.steps} already (raise --steps to go on)"
    elif result.resumed_from:
        summary = f"trained {done} steps (steps {result.resumed_from + 1} to {result.steps}) in {result.seconds:.1f} s"
    else:
        summary = f"trained {done} steps in {result.seconds:.1f} s"
    if result.skipped:
        summary += f" ({result.skipped} skipped: non-finite gradients)"
    if result.test:
        summary += "; test " + ", ".join(f"{k} {v:.4g}" for k, v in result.test.items())
        summary += " (baseline " + ", ".join(f"{k} {v:.4g}" for k, v in result.baseline.items()) + ")"
    print(summary)
    print(f"checkpoint: {result.checkpoint}")
    print(f"metrics: {os.path.join(result.out, 'metrics.jsonl')}")
    if result.plot:
        print(f"plot: {result.plot}")
    elif args.quiet and result.note:  # (with the progress shown, the trainer has said why already)
        print(result.note)
    if result.interrupted:
        print(f"interrupted: continue with gpubptt train --resume {result.out}", file=sys.stderr)
        return 130
    return 0


def run_sample(args):
    from .training import sample_text

    try:
        text = sample_text(args.checkpoint, length=args.length, temperature=args.temperature, prime=args.prime,
                           seed=args.seed, backend=args.backend)
    except (ValueError, TypeError) as e:
        option_error("sample", e, args, PYTHON_NAMES)
        return 2
    print(text)
    return 0
