"""Built-in training tasks: generated from a seeded NumPy generator (nothing is downloaded), each with
a metric and the baseline that a model without memory (or without learning) reaches.

    task    inputs x [T,B,D]                 targets d                 loss, metric on the test set
    sine    noisy sine wave, D = 1           the next noisy value      squared, every step; mse per step
    adding  U[0,1] values + 0/1 marks, D = 2 sum of the 2 marked values squared, last step; mse
    copy    10 symbols, a delay, "go", D=10  the 10 symbols after "go" cross-entropy, every step;
                                                                       cross_entropy (nats), accuracy
    text    one-hot characters, D = V        the next character        cross-entropy; bits_per_char

sine: x_t = sin(ω t + φ) + ε_t with ω ~ U[0.2, 0.6] rad per step, φ ~ U[0, 2π), ε_t ~ N(0, 0.05²),
    d_t = x_{t+1}. Predicting the last value costs E[1 - cos ω] + 2·0.05² ≈ 0.09 per step; the noise
    alone costs 0.05² = 0.0025 (the floor no model beats).
adding (Hochreiter & Schmidhuber 1997, Le et al. 2015): channel 0 holds U[0,1] values, channel 1 marks
    one step in the first half and one in the second; the target, read at the last step only (the
    article's many-to-one E_N), is the sum of the two marked values. Its variance is 2/12, so always
    answering 1 (the mean) gives MSE 1/6 ≈ 0.167: a model "near the baseline" learned nothing.
copy (Arjovsky et al. 2016): an alphabet of 10 (0 blank, 1-8 data, 9 "go"), one-hot. Ten data symbols,
    delay - 1 blanks, "go", ten blanks (T = delay + 20); the target is blank everywhere except the last
    ten steps, which must repeat the ten symbols. A memoryless model predicts blank, then uniform over
    the 8 data symbols: 10·ln 8 / T nats per step, accuracy 1/8.
text: a character-level language model on a UTF-8 text file: the first 90 % trains, the last 10 %
    tests. The baseline is the cross-entropy of the test characters under the training text's
    character frequencies (add-one smoothed), in bits per character.

The test set of every task is fixed (generated from ``TEST_SEED``), so runs with different seeds are
measured on the same sequences. Batches come from the trainer's generator: ``task.batch(rng, B)``.
"""
import hashlib
import math
import os

import numpy as np

from .arrays import (check_choice, check_dtype, check_float_array, check_float_type, check_int, check_int_array,
                     to_host)

__all__ = ["Task", "Sine", "Adding", "Copy", "Text", "make_task", "TASKS"]

TASKS = ("sine", "adding", "copy", "text")
TEST_SEED = 1234
TEST_SEQUENCES = 2048
DEFAULT_SEQ_LEN = {"sine": 50, "adding": 50, "text": 100}
DEFAULT_DELAY = 10
COPY_SYMBOLS = 10  # symbols to remember
COPY_ALPHABET = 10  # 0 blank, 1..8 data, 9 "go"
TEXT_TEST_FRACTION = 0.1


class Task:
    """A generated task. Subclasses set the sizes, the loss and the generator ``_make(rng, B)``.

    input_size D, output_size O, output_activation (g2 of the model), loss ('squared' or
    'cross_entropy'), loss_steps ('all' or 'last'), seq_len T, metric (the headline metric's name,
    lower is better), baseline {metric: value on the test set}.
    """

    name = None
    output_activation = "identity"
    loss = "squared"
    loss_steps = "all"
    metric = "mse"

    fixed_length = False  # whether metrics need sequences of seq_len steps (targets at fixed steps)

    def __init__(self, seq_len, dtype=np.float32):
        self.seq_len = check_int("seq_len", seq_len)
        self.dtype = check_dtype("dtype", dtype)
        self._test = None

    def batch(self, rng, batch_size):
        """(x [T,B,D], d) of B fresh sequences drawn from ``rng``, a ``numpy.random.Generator`` or an
        integer seed (NumPy arrays)."""
        if not isinstance(rng, np.random.Generator):
            rng = np.random.default_rng(check_int("rng", rng, low=0))
        return self._make(rng, check_int("batch_size", batch_size))

    def test_set(self):
        """(x, d): the fixed test sequences (the same for every run)."""
        if self._test is None:
            self._test = self._make(np.random.default_rng(TEST_SEED), TEST_SEQUENCES)
        return self._test

    def config(self):
        """What rebuilds this task (stored in checkpoints)."""
        return {"name": self.name, "seq_len": self.seq_len}

    def metrics(self, Y, d):
        """{metric: float} of outputs Y [T,B,O] (NumPy or CuPy) against targets d of ``batch`` or
        ``test_set`` ([T,B,O], or classes [T,B] for a cross-entropy task), of any length T but for a
        task whose targets lie at fixed steps (copy), where T is its seq_len. Outputs that hold NaN or
        Inf give NaN or Inf metrics (a diverged model), not an error."""
        Y, d = to_host(Y), np.asarray(to_host(d))
        check_float_type("Y", Y)
        O, T = self.output_size, self.seq_len if self.fixed_length else None
        if self.loss == "cross_entropy":
            check_int_array("d", d, ("T", "B"), (T, None), 0, O)  # classes
        else:
            check_float_array("d", d, ("T", "B", "O"), (T, None, O))
        T, B = d.shape[:2]
        if T == 0 or B == 0:
            raise ValueError(f"d: expected at least one step and one sequence, got shape {d.shape}")
        if Y.shape != (T, B, O):
            raise ValueError(f"Y: expected the model's outputs [T,B,O] = ({T}, {B}, {self.output_size}) for targets "
                             f"d of shape {d.shape}, got {Y.shape}")
        return self._metrics(Y.astype(np.float64), d)

    def _metrics(self, Y, d):
        steps = slice(-1, None) if self.loss_steps == "last" else slice(None)
        return {"mse": float(np.mean(np.sum((Y[steps] - d[steps]) ** 2, axis=-1)))}

    def describe(self):
        base = ", ".join(f"{k} {v:.4g}" for k, v in self.baseline.items())
        return f"{self.name}: T={self.seq_len}, D={self.input_size}, O={self.output_size}; baseline {base}"


class Sine(Task):
    """Next-step prediction of noisy sine waves (module docstring)."""

    name = "sine"
    input_size = 1
    output_size = 1
    NOISE = 0.05
    OMEGA = (0.2, 0.6)

    def _make(self, rng, B):
        T = self.seq_len
        omega = rng.uniform(*self.OMEGA, size=(1, B))
        phase = rng.uniform(0, 2 * np.pi, size=(1, B))
        t = np.arange(T + 1)[:, None]
        wave = np.sin(omega * t + phase) + self.NOISE * rng.standard_normal((T + 1, B))
        x = wave[:-1, :, None].astype(self.dtype)
        d = wave[1:, :, None].astype(self.dtype)
        return x, d

    @property
    def baseline(self):
        x, d = self.test_set()
        return {"mse": float(np.mean((x.astype(np.float64) - d) ** 2))}  # predict the last value


class Adding(Task):
    """The adding problem (module docstring): squared error at the last step only."""

    name = "adding"
    input_size = 2
    output_size = 1
    loss_steps = "last"

    def __init__(self, seq_len, dtype=np.float32):
        super().__init__(seq_len, dtype)
        if self.seq_len < 2:
            raise ValueError(f"seq_len: the adding problem needs at least 2 steps, got {seq_len!r}")

    def _make(self, rng, B):
        T = self.seq_len
        values = rng.uniform(0, 1, size=(T, B))
        half = T // 2
        first = rng.integers(0, half, size=B)
        second = rng.integers(half, T, size=B)
        marks = np.zeros((T, B))
        marks[first, np.arange(B)] = 1
        marks[second, np.arange(B)] = 1
        x = np.stack([values, marks], axis=-1).astype(self.dtype)
        d = np.zeros((T, B, 1), self.dtype)
        d[-1, :, 0] = (values * marks).sum(axis=0)
        return x, d

    @property
    def baseline(self):
        _, d = self.test_set()
        return {"mse": float(np.mean((d[-1].astype(np.float64) - 1.0) ** 2))}  # always predict 1


class Copy(Task):
    """The copy-memory task (module docstring): cross-entropy at every step."""

    name = "copy"
    input_size = COPY_ALPHABET
    output_size = COPY_ALPHABET
    output_activation = "softmax"
    loss = "cross_entropy"
    metric = "cross_entropy"
    fixed_length = True  # the recall is scored on the last COPY_SYMBOLS steps, after the "go" marker

    def __init__(self, delay=DEFAULT_DELAY, dtype=np.float32):
        self.delay = check_int("delay", delay)
        super().__init__(self.delay + 2 * COPY_SYMBOLS, dtype)

    def _make(self, rng, B):
        T, n = self.seq_len, COPY_SYMBOLS
        symbols = rng.integers(1, COPY_ALPHABET - 1, size=(n, B))
        tokens = np.zeros((T, B), np.int64)
        tokens[:n] = symbols
        tokens[n + self.delay - 1] = COPY_ALPHABET - 1  # "go"
        d = np.zeros((T, B), np.int64)
        d[T - n:] = symbols
        x = np.eye(COPY_ALPHABET, dtype=self.dtype)[tokens]
        return x, d

    def config(self):
        return {"name": self.name, "seq_len": self.seq_len, "delay": self.delay}

    def _metrics(self, Y, d):
        p = np.take_along_axis(Y, d[..., None], axis=-1)[..., 0]
        recall = Y[-COPY_SYMBOLS:].argmax(axis=-1) == d[-COPY_SYMBOLS:]
        return {"cross_entropy": float(-np.mean(np.log(np.maximum(p, 1e-300)))),
                "accuracy": float(recall.mean())}

    @property
    def baseline(self):
        return {"cross_entropy": COPY_SYMBOLS * math.log(COPY_ALPHABET - 2) / self.seq_len,
                "accuracy": 1.0 / (COPY_ALPHABET - 2)}


class Text(Task):
    """Character-level language model on a text file (module docstring)."""

    name = "text"
    output_activation = "softmax"
    loss = "cross_entropy"
    metric = "bits_per_char"

    def __init__(self, path, seq_len=DEFAULT_SEQ_LEN["text"], dtype=np.float32, vocab=None):
        super().__init__(seq_len, dtype)
        if vocab is not None:
            if not isinstance(vocab, str):
                raise TypeError(f"vocab: expected a string of distinct characters, got {type(vocab).__name__}")
            repeated = sorted(c for c in set(vocab) if vocab.count(c) > 1)
            if repeated:
                raise ValueError(f"vocab: expected distinct characters, got repeats of {''.join(repeated)!r}")
        self.path, self.text, self.sha256 = read_text(path)
        chars = sorted(set(self.text))
        if vocab is not None:  # a checkpoint's alphabet: the file may not bring characters it lacks
            unknown = sorted(set(chars) - set(vocab))
            if unknown:
                raise ValueError(f"text: {self.path} holds characters the checkpoint's vocabulary lacks: "
                                 f"{''.join(unknown)[:20]!r}")
            chars = list(vocab)
        self.vocab = "".join(chars)
        self.index = {c: i for i, c in enumerate(self.vocab)}
        self.input_size = self.output_size = len(self.vocab)
        codes = np.fromiter((self.index[c] for c in self.text), np.int64, len(self.text))
        n_test = int(len(codes) * TEXT_TEST_FRACTION)
        self.train_codes, self.test_codes = codes[:len(codes) - n_test], codes[len(codes) - n_test:]
        need = self.seq_len + 1
        if len(self.train_codes) < need or len(self.test_codes) < need:
            raise ValueError(
                f"text: {self.path} has {len(codes)} characters; with seq_len {self.seq_len} it needs at least "
                f"{math.ceil(need / TEXT_TEST_FRACTION)} (the last {TEXT_TEST_FRACTION:.0%} tests, and each part "
                f"must hold one sequence of seq_len + 1 characters)"
            )

    def encode(self, s):
        return encode(s, self.index)

    def one_hot(self, codes):
        return one_hot(codes, self.input_size, self.dtype)

    def _make(self, rng, B):
        T = self.seq_len
        starts = rng.integers(0, len(self.train_codes) - T, size=B)
        idx = starts[None, :] + np.arange(T + 1)[:, None]
        seq = self.train_codes[idx]
        return self.one_hot(seq[:-1]), seq[1:]

    def test_set(self):
        if self._test is None:
            T = self.seq_len
            n = min(TEST_SEQUENCES, (len(self.test_codes) - 1) // T)
            seq = self.test_codes[:n * T + 1]
            idx = np.arange(n)[None, :] * T + np.arange(T + 1)[:, None]
            self._test = (self.one_hot(seq[idx[:-1]]), seq[idx[1:]])
        return self._test

    def config(self):
        return {"name": self.name, "seq_len": self.seq_len, "path": self.path, "sha256": self.sha256,
                "vocab": self.vocab}

    def _metrics(self, Y, d):
        p = np.take_along_axis(Y, d[..., None], axis=-1)[..., 0]
        return {"bits_per_char": float(-np.mean(np.log2(np.maximum(p, 1e-300))))}

    @property
    def baseline(self):
        counts = np.bincount(self.train_codes, minlength=self.output_size) + 1.0
        freq = counts / counts.sum()
        _, d = self.test_set()
        return {"bits_per_char": float(-np.mean(np.log2(freq[d]))) + 0.0}  # + 0.0: one character gives 0, not -0


def read_text(path):
    """(absolute path, text, sha256 of the bytes) of a UTF-8 text file; ValueError if it is empty,
    binary or not UTF-8, or cannot be read."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"text: expected the path of a text file, got {type(path).__name__}")
    path = os.path.abspath(os.fspath(path))
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ValueError(f"text: cannot read {path}: {e.strerror or e}") from None
    if not data:
        raise ValueError(f"text: {path} is empty; expected a UTF-8 text file")
    if b"\x00" in data:
        raise ValueError(f"text: {path} is not text (it holds NUL bytes); expected a UTF-8 text file")
    try:
        text = data.decode("utf-8-sig")  # a byte-order mark is not part of the text
    except UnicodeDecodeError as e:
        raise ValueError(f"text: {path} is not UTF-8 text (invalid byte at offset {e.start})") from None
    return path, text, hashlib.sha256(data).hexdigest()


def encode(s, index):
    """The codes [len(s)] of the characters of the string ``s`` ({character: code}); ValueError if
    some are not in ``index``."""
    if not isinstance(s, str):
        raise TypeError(f"s: expected a string, got {type(s).__name__}")
    unknown = sorted(set(s) - set(index))
    if unknown:
        raise ValueError(f"s: characters not in the vocabulary of {len(index)} characters: {''.join(unknown)!r}")
    return np.array([index[c] for c in s], np.int64)


def one_hot(codes, size, dtype):
    """codes [...] (integers in [0, size)) -> one-hot vectors [..., size] of ``dtype``."""
    codes = np.asarray(codes)
    try:
        check_int_array("codes", codes, ("...",) * codes.ndim, codes.shape, 0, size)  # any shape
    except ValueError as e:
        raise ValueError(f"{e} (the vocabulary has {size} characters)") from None
    return np.eye(size, dtype=dtype)[codes]


def make_task(name, seq_len=None, delay=None, text=None, dtype=np.float32, vocab=None):
    """A task by name. seq_len: T (sine, adding, text; copy derives it from delay); delay: copy's
    delay; text: the file of the text task; vocab: its alphabet (a string; default: the file's characters,
    sorted). An option the task does not take is an error."""
    check_choice("task", name, TASKS)
    if delay is not None and name != "copy":
        raise ValueError(f"delay: only the copy task takes a delay, got delay={delay!r} for task {name!r}")
    if text is not None and name != "text":
        raise ValueError(f"text: only the text task reads a file, got text={text!r} for task {name!r}")
    if vocab is not None and name != "text":
        raise ValueError(f"vocab: only the text task has a vocabulary, got vocab={vocab!r} for task {name!r}")
    if name == "copy":
        check_int("seq_len", seq_len, allow_none=True)
        task = Copy(DEFAULT_DELAY if delay is None else delay, dtype)
        if seq_len is not None and seq_len != task.seq_len:
            raise ValueError(f"seq_len: the copy task's length is delay + {2 * COPY_SYMBOLS} = {task.seq_len}, "
                             f"got seq_len={seq_len!r}; set the delay instead")
        return task
    seq_len = DEFAULT_SEQ_LEN[name] if seq_len is None else seq_len
    if name == "text":
        if text is None:
            raise ValueError("text: the text task needs a text file (--text FILE)")
        return Text(text, seq_len, dtype, vocab)
    return {"sine": Sine, "adding": Adding}[name](seq_len, dtype)


def task_from_config(config, dtype=np.float32):
    """Rebuild a task from ``Task.config()`` (a checkpoint); the text task checks that its file is the
    one trained on."""
    name = config.get("name")
    if name == "copy":
        return make_task("copy", delay=config["delay"], dtype=dtype)
    if name == "text":
        task = make_task("text", seq_len=config["seq_len"], text=config["path"], dtype=dtype, vocab=config["vocab"])
        if task.sha256 != config["sha256"]:
            raise ValueError(f"text: {task.path} changed since the checkpoint was written (sha256 differs)")
        return task
    return make_task(name, seq_len=config["seq_len"], dtype=dtype)
