"""Forward + BPTT of the cpu backend at another commit and in this checkout, side by side.

    python benchmarks/ab_commits.py COMMIT CELL BxTxDxH[,...] [ROUNDS] [THREADS]

e.g. ``python benchmarks/ab_commits.py 357550d tanh 1x1000x8x64,4x1000x64x256 5``. COMMIT's gpubptt and
kernels (``git archive``) and this checkout's (as they are on disk) are copied into temporary folders
laid out as an installed package (gpubptt/kernels), whatever the install; each round then runs one process on COMMIT's code and one on this checkout's, in
turn, so that a slow spell of a shared machine falls on both. A process times each shape as the median
of its calls after 3 untimed ones (at least 7, up to ~0.5 s of calls, at most 60). Prints per shape
the median over ROUNDS (default 3) of each side's medians and their ratio. float32, O = 1, THREADS
Numba threads (default 2), the bench's problems (gpubptt.bench.Problem).
"""
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TIMER = r'''
import json, statistics, sys, time
from numba import set_num_threads
set_num_threads(int(sys.argv[3]))
from gpubptt import bench, model
cell, out = sys.argv[1], {}
for B, T, D, H in bench.parse_shapes(sys.argv[2]):
    prob = bench.Problem(B, T, D, H, 1, cell, "float32")
    run = lambda: model.bptt(prob.params, prob.x, prob.d, prob.s0, cell, backend="cpu")
    for _ in range(3):
        run()
    times = []
    while len(times) < 7 or (sum(times) < 0.5 and len(times) < 60):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    out[f"{B}x{T}x{D}x{H}"] = statistics.median(times) * 1e3
print(json.dumps(out))
'''


def extract(commit, into):
    """COMMIT's gpubptt/ and kernels/ as into/gpubptt with kernels/ inside it."""
    archive = subprocess.run(["git", "-C", HERE, "archive", commit, "gpubptt", "kernels"], check=True,
                             capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    os.rename(os.path.join(into, "kernels"), os.path.join(into, "gpubptt", "kernels"))


def copy_checkout(into):
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(os.path.join(HERE, "gpubptt"), os.path.join(into, "gpubptt"), ignore=ignore)
    shutil.copytree(os.path.join(HERE, "kernels"), os.path.join(into, "gpubptt", "kernels"), ignore=ignore)


def main(commit, cell, shapes, rounds=3, threads=2):
    with tempfile.TemporaryDirectory() as base, tempfile.TemporaryDirectory() as ours:
        extract(commit, base)
        copy_checkout(ours)
        sides = {commit: base, "checkout": ours}
        runs = {name: [] for name in sides}
        for _ in range(rounds):
            for name, path in sides.items():
                env = dict(os.environ, PYTHONPATH=path)
                done = subprocess.run([sys.executable, "-c", TIMER, cell, shapes, str(threads)], cwd=path, env=env,
                                      capture_output=True, text=True)
                if done.returncode:
                    sys.exit(done.stderr[-3000:])
                runs[name].append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(f"{cell}, {threads} threads, median of {rounds} rounds: {commit} / this checkout")
    for shape in runs[commit][0]:
        a, b = (statistics.median(r[shape] for r in runs[name]) for name in sides)
        print(f"({shape.replace('x', ',')}): {a:.3f} / {b:.3f} ms ({a / b:.2f}x)", flush=True)


if __name__ == "__main__":
    args = sys.argv[1:]
    if len(args) < 3:
        sys.exit(__doc__)
    main(args[0], args[1], args[2], *(int(a) for a in args[3:]))
