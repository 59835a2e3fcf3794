"""Forward + BPTT of the cpu backend with an environment variable at two or more values, side by side.

    python benchmarks/ab_env.py NAME VALUE,VALUE[,...] CELL BxTxDxH[,...] [THREADS] [REPEAT]

e.g. ``python benchmarks/ab_env.py GPUBPTT_REGISTER_GEMM 1,0 lstm 64x100x64x256 2``. The kernels read
their switches (GPUBPTT_CPU_VARIANT, GPUBPTT_REGISTER_GEMM, ...) at each call, so the values take
turns in one process: each shape runs every value once untimed, then REPEAT (default 7) rounds of one
timed call per value, in order; a round's calls are adjacent in time, so a slow spell of a shared
machine falls on all of them. Prints per shape the median ms of each value, the plan the cpu
variants made (kernels/cpu_variants.py: variant, piece or tile, threads) and each median over the
first value's. float32, O = 1, the bench's problems (gpubptt.bench.Problem).
"""
import os
import statistics
import sys
import time

from numba import set_num_threads

from gpubptt import bench, model
from gpubptt.kernels import cpu_variants


def main(name, values, cell, shapes, threads=2, repeat=7):
    set_num_threads(threads)
    print(f"{name} = {' / '.join(values)}; cell {cell}; {threads} threads; median of {repeat}")
    for B, T, D, H in bench.parse_shapes(shapes):
        prob = bench.Problem(B, T, D, H, 1, cell, "float32")
        Ws = next(v for k, v in prob.params.items() if k.startswith("Ws"))
        times, plans = {v: [] for v in values}, {}
        for v in values:
            os.environ[name] = v
            model.bptt(prob.params, prob.x, prob.d, prob.s0, cell, backend="cpu")
            plans[v] = cpu_variants.plan(B, Ws)
        for _ in range(repeat):
            for v in values:
                os.environ[name] = v
                t0 = time.perf_counter()
                model.bptt(prob.params, prob.x, prob.d, prob.s0, cell, backend="cpu")
                times[v].append(time.perf_counter() - t0)
        med = {v: statistics.median(times[v]) * 1e3 for v in values}
        first = values[0]
        print(f"({B},{T},{D},{H}): " + ", ".join(f"{v}: {med[v]:.2f} ms {plans[v]} ({med[v] / med[first]:.2f}x)"
                                              for v in values), flush=True)


if __name__ == "__main__":
    args = sys.argv[1:]
    if len(args) < 4:
        sys.exit(__doc__)
    main(args[0], args[1].split(","), args[2], args[3], *(int(a) for a in args[4:6]))
