"""Numba's on-disk cache of the CPU kernels, made to notice a change in any file of this package.

Numba keys a cached function by its own source file alone (numba 0.68 a hash of its contents, 0.61
its time and size), so a change in a function it calls from another file (``activations.py``, say)
left the old machine code in use, in silence: after an upgrade of gpubptt as after an edit. Here the
stamp of every function of this package's files is its file's stamp and a digest of all of them
(``DIGEST``), through locators that take the place of Numba's own for these files only: the same
cache directories and file names, and Numba's rules for everything else. Where Numba's caching
module lacks the classes this builds on, where the files cannot be read as files (a zip import, a
frozen application, whose stamp Numba takes from the executable) or where NUMBA_CACHE_LOCATOR_CLASSES
names the locators, Numba's own behaviour stands (``INSTALLED`` is False).
"""
import hashlib
import os
import sys

from numba.core import caching, config

HERE = os.path.dirname(os.path.abspath(__file__))


def sources_digest(directory=HERE):
    """SHA-256 of the names and contents of the .py files in ``directory`` (OSError if it cannot be read)."""
    h = hashlib.sha256()
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        if name.endswith(".py") and os.path.isfile(path):  # (not an editor's lock file, a dangling link)
            with open(path, "rb") as f:
                h.update(name.encode() + b"\0" + f.read() + b"\0")
    return h.hexdigest()


def _digest():
    if getattr(sys, "frozen", False):
        return None
    try:
        return sources_digest()
    except OSError:
        return None


DIGEST = _digest()


def _stamped(base):
    """A subclass of Numba's locator ``base`` for the files of this package only, whose stamp adds DIGEST."""

    class Locator(base):
        def get_source_stamp(self):
            return super().get_source_stamp(), DIGEST

        @classmethod
        def from_function(cls, py_func, py_file):
            if os.path.dirname(os.path.abspath(py_file)) != HERE:
                return None
            return super().from_function(py_func, py_file)

    Locator.__name__ = Locator.__qualname__ = "Kernels" + base.__name__.lstrip("_")
    return Locator


def _install():
    if DIGEST is None or getattr(config, "CACHE_LOCATOR_CLASSES", None):  # files unread; the user's locators
        return False
    # (numba 0.68 names them UserProvidedCacheLocator, ...; 0.61 _UserProvidedCacheLocator, ...)
    names = ("UserProvidedCacheLocator", "InTreeCacheLocator", "UserWideCacheLocator")
    bases = [getattr(caching, n, None) or getattr(caching, "_" + n, None) for n in names]
    classes = getattr(getattr(caching, "CacheImpl", None), "_locator_classes", None)
    if None in bases or not isinstance(classes, list):  # pragma: no cover - another Numba
        return False
    if not any(getattr(c, "__module__", None) == __name__ for c in classes):  # (once per process)
        classes[:0] = [_stamped(b) for b in bases]  # tried in Numba's order, before Numba's own
    return True


INSTALLED = _install()
