"""Every notebook in notebooks/ runs top to bottom in a fresh Jupyter kernel without an error.

The notebooks assert the numerical claims they show, so a notebook that runs is a notebook whose
numbers hold; timings they show are printed, never asserted (a busy machine varies).
The kernel is ``python3`` from this environment's kernelspecs only (``pip install ipykernel`` writes
it to sys.prefix/share/jupyter/kernels; its command ``python`` is started as ``sys.executable``), so
a ``python3`` kernel registered for another interpreter in the user's Jupyter directories cannot be
picked up; a cell put in front of each notebook checks that the kernel runs in this environment.
"""
import os
import pathlib
import sys
import time

import pytest

NOTEBOOKS = pathlib.Path(__file__).resolve().parents[1] / "notebooks"
PATHS = sorted(NOTEBOOKS.glob("*.ipynb"))
CELL_TIMEOUT_S = 600  # per cell; each notebook as a whole runs in well under a minute on 2 cores

try:
    import nbclient
    import nbformat
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager
except ImportError as e:  # pragma: no cover - depends on the install
    if os.environ.get("CI"):
        raise ImportError(f"{e}: the notebook test needs the test extra, pip install -e '.[test]'") from e
    pytest.skip(f"nbclient/nbformat not installed ({e}); pip install -e '.[test]'", allow_module_level=True)


def test_the_notebooks_are_there():
    names = [p.name for p in PATHS]
    for expected in ("01_bptt_by_hand.ipynb", "02_vanishing_gradients.ipynb",
                     "03_exploding_gradients_and_clipping.ipynb", "04_gpu_batched_training.ipynb"):
        assert expected in names, f"notebooks/{expected} is missing (found {names})"


@pytest.mark.parametrize("path", PATHS, ids=[p.stem for p in PATHS])
def test_notebook_runs(path, monkeypatch, capsys):
    # The kernel inherits this environment. Keep it away from the CUDA simulator (the second test tier
    # may have it on; the notebooks would then crawl through Python threads), from a forced backend, and
    # draw figures with the inline backend (headless, and it renders every figure, so a bad label fails).
    monkeypatch.delenv("NUMBA_ENABLE_CUDASIM", raising=False)
    monkeypatch.delenv("GPUBPTT_BACKEND", raising=False)
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    nb = nbformat.read(path, as_version=4)
    check = nbformat.v4.new_code_cell(
        f"import sys\nassert sys.prefix == {sys.prefix!r}, "
        f"f'the kernel runs {{sys.executable}}, not the interpreter of the tests ({sys.executable})'")
    nb.cells.insert(0, check)
    # this environment's kernelspecs; without one there, ipykernel's built-in spec (also sys.executable)
    specs = KernelSpecManager(kernel_dirs=[os.path.join(sys.prefix, "share", "jupyter", "kernels")])
    km = KernelManager(kernel_name="python3", kernel_spec_manager=specs)
    client = nbclient.NotebookClient(nb, km=km, kernel_name="python3", timeout=CELL_TIMEOUT_S,
                                     startup_timeout=120, resources={"metadata": {"path": str(NOTEBOOKS)}})
    start = time.perf_counter()
    client.execute()  # raises CellExecutionError, with the cell and its traceback, if any cell fails
    with capsys.disabled():
        print(f"\n{path.name}: ran in {time.perf_counter() - start:.1f} s", end="")
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors, f"{path.name}: {errors[0]['ename']}: {errors[0]['evalue']}"
