"""Training checkpoints: one ``checkpoint.npz`` per run directory, written atomically.

A checkpoint holds NumPy arrays (parameters, optimizer buffers, the carried recurrent state) and a
JSON document (model, task and optimizer configuration, step, random-generator states) stored as
the array ``meta``, plus a SHA-256 digest of everything. It is written to a temporary file in the
same directory, flushed and fsync'ed, then moved over the previous one with ``os.replace`` (atomic on
POSIX and Windows) and the directory fsync'ed: a crash or kill during a save leaves the previous
checkpoint whole, never a half-written one. Loading verifies the digest: a truncated, corrupted or
foreign file raises ``CheckpointError`` (a ValueError) naming the file, and changes nothing.
"""
import glob
import hashlib
import io
import json
import os
import tempfile
import zipfile
import zlib

import numpy as np

FILENAME = "checkpoint.npz"
FORMAT = "gpubptt-checkpoint"
VERSION = 1
_TMP_PREFIX = ".checkpoint-"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing, corrupted, or written for something else."""


def path_in(directory):
    return os.path.join(os.fspath(directory), FILENAME)


def check_directory(name, directory, create=False, writable=False):
    """An existing (or, with ``create``, a new) directory; ValueError if the path is a file, or, with
    ``writable``, if it exists and cannot be written in."""
    if not isinstance(directory, (str, os.PathLike)):
        raise TypeError(f"{name}: expected a directory path, got {type(directory).__name__}")
    directory = os.fspath(directory)
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise ValueError(f"{name}: {directory} is a file, expected a directory")
    if create:
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError as e:
            raise ValueError(f"{name}: cannot create the directory {directory}: {e.strerror or e}") from None
    if writable and os.path.isdir(directory) and not os.access(directory, os.W_OK):
        raise ValueError(f"{name}: cannot write in {directory} (permission denied, or a read-only file system)")
    return directory


def check_output_file(name, path, create=False):
    """``path`` (str or os.PathLike) as a str: a file name, not a directory, in a directory that exists
    (with ``create``: is made) and can be written in; TypeError or ValueError naming ``name`` otherwise."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{name}: expected a file name (str or os.PathLike), got {type(path).__name__}")
    path = os.fsdecode(path)
    if not path:
        raise ValueError(f"{name}: expected a file name, got {path!r}")
    if os.path.isdir(path):
        raise ValueError(f"{name}: {path} is a directory, expected a file name")
    parent = os.path.dirname(path) or "."
    if not create and not os.path.isdir(parent):
        raise ValueError(f"{name}: the directory {parent} of {path} does not exist")
    check_directory(name, parent, create=create, writable=True)
    return path


def write_atomically(path, write, prefix=None):
    """Write the file ``path`` through ``write(f)`` (f a binary file open for writing) into a temporary
    file of the same directory, flushed to disk and moved into place: ``path`` is the old file or the
    whole new one, never a part; when anything fails the temporary file is removed and ``path`` left
    as it was. ``prefix``: the temporary file's name starts so (default '.NAME-')."""
    fd, tmp = tempfile.mkstemp(prefix=prefix or f".{os.path.basename(path)}-", suffix=".tmp",
                               dir=os.path.dirname(os.path.abspath(path)))
    try:
        with os.fdopen(fd, "wb") as f:
            os.chmod(tmp, 0o644)  # mkstemp makes it private; these are ordinary files
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _digest(arrays, meta_text):
    h = hashlib.sha256(meta_text.encode())
    for key in sorted(arrays):
        a = np.ascontiguousarray(arrays[key])
        h.update(f"{key}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def save(directory, arrays, meta, name="out"):
    """Write ``arrays`` ({name: NumPy array}) and ``meta`` (JSON-able dict) to directory/checkpoint.npz
    atomically; returns the path. The previous checkpoint stays intact if anything fails. ``name``:
    the argument that gave the directory, for the error message."""
    directory = check_directory(name, directory, create=True)
    if os.path.isdir(path_in(directory)):
        raise ValueError(f"{name}: {path_in(directory)} is a directory, where the checkpoint goes")
    payload = {k: np.asarray(v) for k, v in arrays.items()}
    for k, v in payload.items():
        if k in ("meta", "digest"):
            raise ValueError(f"arrays: {k!r} is the name of the checkpoint's own entry; name the array otherwise")
        if v.dtype.hasobject:
            raise TypeError(f"arrays[{k!r}]: expected an array of numbers, got dtype {v.dtype} (a checkpoint holds no "
                            "Python objects)")
    if "format" in meta or "version" in meta:
        raise ValueError("meta: 'format' and 'version' are written by the checkpoint itself; name the entries "
                         "otherwise")
    meta_text = json.dumps({"format": FORMAT, "version": VERSION, **meta}, sort_keys=True)
    payload["meta"] = np.array(meta_text)
    payload["digest"] = np.array(_digest({k: v for k, v in payload.items() if k != "meta"}, meta_text))
    write_atomically(path_in(directory), lambda f: np.savez(f, **payload), prefix=_TMP_PREFIX)
    _fsync_directory(directory)
    for stale in glob.glob(os.path.join(glob.escape(directory), _TMP_PREFIX + "*.tmp")):  # left by a killed save
        try:
            os.unlink(stale)
        except OSError:
            pass
    return path_in(directory)


def _fsync_directory(directory):
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # platforms that cannot open a directory (Windows): os.replace is enough there
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_run(directory, name="resume"):
    """``load`` for a resume: the checkpoint of a training run (one written by ``RNN.save`` holds a
    model alone, with no optimizer state or position in the data)."""
    arrays, meta = load(directory, name)
    if "train" not in meta:
        raise CheckpointError(f"{name}: {path_in(directory)} holds a model saved by RNN.save, not a training run: "
                              "there is nothing to resume; load it with gpubptt.load_model and train it with out= "
                              "another directory")
    return arrays, meta


def exists(directory):
    return os.path.isfile(path_in(directory))


def load(directory, name="resume"):
    """(arrays, meta) of directory/checkpoint.npz; CheckpointError if it is missing or unusable, its
    message naming the argument that gave the directory (``name``)."""
    directory = check_directory(name, directory)
    path = path_in(directory)
    if not os.path.isfile(path):
        raise CheckpointError(f"{name}: {directory} holds no checkpoint ({FILENAME} not found)")
    try:
        with open(path, "rb") as f:
            data = f.read()
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError, NotImplementedError, RuntimeError,
            zlib.error) as e:
        # (a damaged zip directory can name a compression method or version zipfile does not implement,
        # or mark an entry encrypted)
        raise CheckpointError(f"checkpoint {path} is corrupted or not a checkpoint: {type(e).__name__}: {e}") from None
    if "meta" not in arrays or "digest" not in arrays:
        raise CheckpointError(f"checkpoint {path} is not a gpubptt checkpoint (no meta/digest entries)")
    meta_text, digest = str(arrays.pop("meta")), str(arrays.pop("digest"))
    if _digest(arrays, meta_text) != digest:
        raise CheckpointError(f"checkpoint {path} is corrupted: its SHA-256 digest does not match its contents")
    try:
        meta = json.loads(meta_text)
    except ValueError as e:
        raise CheckpointError(f"checkpoint {path} is corrupted: its metadata is not JSON ({e})") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path} is not a gpubptt checkpoint (format {meta.get('format')!r})")
    if meta.get("version") != VERSION:
        raise CheckpointError(f"checkpoint {path} has format version {meta.get('version')!r}; this gpubptt reads "
                              f"version {VERSION}")
    return arrays, meta
