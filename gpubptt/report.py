"""What a training run shows and leaves behind: the progress bar (stderr), the metrics log
(``metrics.jsonl``, one JSON object per line) and the loss-curve / gradient-norm plot
(``training.png``, needs matplotlib: ``pip install 'gpubptt[plot]'``).

Metrics lines are either a training step

    {"step": 12, "loss": 0.0412, "grad_norm": 0.93, "applied": true, "elapsed": 1.52}

(``loss`` is the step's loss divided by the number of steps it covers, so it reads as a per-step
loss; ``grad_norm`` the global norm before clipping; ``applied`` false for a step skipped because
its gradient was not finite; ``elapsed`` seconds since this run started) or a test evaluation

    {"step": 100, "test": {"mse": 0.0031}, "baseline": {"mse": 0.0888}}

Non-finite numbers are written as null (JSON has no NaN).
"""
import json
import math
import os
import sys
import time

from .checkpoint import check_output_file, write_atomically


def option_error(command, error, args, python_names=None):
    """Print ``error`` as the command's (``gpubptt COMMAND: error: ...``); a message that begins with the
    Python argument an option became names the option instead (``--batch:`` rather than
    ``batch_size:``), without the Python argument's "or None" (an option left out, not a value to
    give). ``args``: the parsed options; ``python_names``: {option's dest: Python name} where the two
    differ."""
    text = str(error)
    name, colon, rest = text.partition(":")
    option = {python: option for option, python in (python_names or {}).items()}.get(name, name)
    if colon and getattr(args, option, None) is not None:
        text = f"--{option.replace('_', '-')}:{rest.replace(' or None, got', ', got')}"
    print(f"gpubptt {command}: error: {text}", file=sys.stderr)


def finite_or_none(v):
    v = float(v)
    return v if math.isfinite(v) else None


class MetricsLog:
    """Appends records to ``path``; ``keep_until(step)`` drops records past a checkpoint's step
    (written by a run that died after it) so a resumed run's log reads as one run."""

    def __init__(self, path, fresh):
        self.path = path
        if fresh:
            open(path, "w").close()

    def keep_until(self, step):
        if not os.path.exists(self.path):
            return
        with open(self.path) as f:
            text = f.read()
        records = _records(text.splitlines())
        kept = [line for line in records if line["step"] <= step]
        if len(kept) == len(records) == text.count("\n") and text.endswith("\n") or not text:
            return  # every line a record, and kept: the file stays as it is
        write_atomically(self.path, lambda f: f.writelines((json.dumps(r) + "\n").encode() for r in kept))

    def write(self, records):
        with open(self.path, "a") as f:
            f.writelines(json.dumps(r) + "\n" for r in records)

    def read(self):
        return read_metrics(self.path)


def read_metrics(path):
    """The records of a metrics.jsonl: JSON objects with an integer step. Other lines (a torn last
    line from a killed run, or an edit) are skipped."""
    with open(path) as f:
        return _records(f)


def _records(lines):
    records = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int) and not isinstance(record["step"], bool):
            records.append(record)
    return records


class Progress:
    """A one-line progress bar on stderr: step, bar, loss, gradient norm, steps/s, skipped steps.

    On a terminal the line is redrawn in place; otherwise (a log file, CI) a line is printed at most
    every 10 % of the run, so logs stay short.
    """

    WIDTH = 20

    def __init__(self, total, enabled=True, stream=None):
        self.total = total
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.last_decile = -1
        self.drawn = False

    def update(self, step, loss, grad_norm, steps_per_s, skipped, final=False):
        if not self.enabled:
            return
        frac = min(1.0, step / self.total) if self.total else 1.0
        filled = int(round(frac * self.WIDTH))
        bar = "#" * filled + "-" * (self.WIDTH - filled)
        text = (f"step {step}/{self.total} [{bar}] loss {_fmt(loss)} |g| {_fmt(grad_norm)} "
                f"{steps_per_s:.1f} steps/s" + (f" skipped {skipped}" if skipped else ""))
        if self.tty:
            self.stream.write("\r" + text.ljust(79))
            self.drawn = True
            if final:
                self.stream.write("\n")
        else:
            decile = int(frac * 10)
            if decile > self.last_decile or final:
                self.stream.write(text + "\n")
                self.last_decile = decile
        self.stream.flush()

    def message(self, text):
        """A line of its own (a test evaluation, a note), not overwritten by the bar."""
        if not self.enabled:
            return
        if self.tty and self.drawn:
            self.stream.write("\n")
            self.drawn = False
        self.stream.write(text + "\n")
        self.stream.flush()


def _fmt(v):
    return "nan" if v is None else f"{v:.4g}"


FIGURE_FORMATS = (".png", ".pdf", ".svg")


def save_figure(fig, path):
    """Save a matplotlib figure at ``path`` (checked by ``checkpoint.check_output_file``) in the format
    its extension names (one of FIGURE_FORMATS; PNG otherwise), atomically (``checkpoint.write_atomically``),
    and close it, whatever fails."""
    import matplotlib.pyplot as plt

    try:
        path = check_output_file("path", path)
        ext = os.path.splitext(path)[1].lower()
        write_atomically(path, lambda f: fig.savefig(f, format=ext[1:] if ext in FIGURE_FORMATS else "png", dpi=100))
    finally:
        plt.close(fig)


def plot(records, path, title="", clip_norm=None):
    """Loss per step (with test evaluations) and gradient norm against step, saved as a PNG at
    ``path`` (written to a temporary file first, then moved). Returns (path, None), or (None, note)
    when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None, "no plot: matplotlib is not installed (pip install 'gpubptt[plot]')"
    steps = [r for r in records if "loss" in r]
    tests = [r for r in records if "test" in r]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    xs = [r["step"] for r in steps]
    ax1.plot(xs, [_nan(r["loss"]) for r in steps], lw=0.8, label="training loss per step")
    if tests:
        metric = next(iter(tests[-1]["test"]))
        ax1.plot([r["step"] for r in tests], [_nan(r["test"][metric]) for r in tests], "o-", ms=3,
                 label=f"test {metric}")
        base = tests[-1].get("baseline", {}).get(metric)
        if base is not None:
            ax1.axhline(base, color="gray", ls="--", lw=0.8, label=f"baseline {metric} {base:.3g}")
    ax1.set_yscale("log")
    ax1.set_ylabel("loss")
    ax1.legend(fontsize=8)
    ax1.set_title(title, fontsize=9)
    ax2.plot(xs, [_nan(r["grad_norm"]) for r in steps], lw=0.8, color="tab:red", label="gradient norm (before clipping)")
    skipped = [r["step"] for r in steps if not r.get("applied", True)]
    if skipped:
        ax2.plot(skipped, [1.0] * len(skipped), "kx", label="skipped (non-finite)")
    if clip_norm:
        ax2.axhline(clip_norm, color="gray", ls="--", lw=0.8, label=f"clip norm {clip_norm:g}")
    ax2.set_yscale("log")
    ax2.set_xlabel("step")
    ax2.set_ylabel("‖g‖")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
    return path, None


def _nan(v):
    return math.nan if v is None else v


class Clock:
    """Wall time since start, for steps/s and the 'elapsed' field."""

    def __init__(self):
        self.start = time.perf_counter()

    def elapsed(self):
        return time.perf_counter() - self.start
