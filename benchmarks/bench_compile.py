"""What ``torch.compile`` costs and saves per worker thread: the inputs of ``--compile auto``.

For each precision, a fresh Python process per setting (as a new worker is) builds the
backbone the way extraction does (``BackboneRunner``: ResNet50, channels-last, batch 8, one
torch thread; compiled with Inductor freezing on the CPU) with an empty Inductor cache, times
its first call (the compile) and then its steady rate. The break-even is the number of images
a worker thread must process before the compile has paid for itself:
``compile_s / (1/eager_rate - 1/compiled_rate)``.

    python -m benchmarks.bench_compile                 # fp32 and, where native, bf16
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.common import machine, save_results, table

ROOT = Path(__file__).resolve().parent.parent
# bench_extract's bare-backbone timing (the runner extraction uses), in a process of its own.
CHILD = """
import json, sys
from benchmarks.common import Config, first_call, steady_rate
precision, compile, seconds, size = sys.argv[1], sys.argv[2] == "1", float(sys.argv[3]), int(sys.argv[4])
runner, x, first = first_call("cpu", Config(precision, compile), 8, size)
runner(x)
print(json.dumps({"first_call_s": first, "images_per_s": steady_rate(runner, x, seconds)}))
"""


def measure(precision: str, compile: bool, seconds: float, size: int) -> dict:
    """One setting in a fresh process with an empty Inductor cache (a new worker's compile)."""
    with tempfile.TemporaryDirectory(prefix="cxrdask-inductor-") as cache:
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache, "OMP_NUM_THREADS": "1"}
        result = subprocess.run([sys.executable, "-c", CHILD, precision, "1" if compile else "0",
                                 str(seconds), str(size)], capture_output=True, text=True,
                                env=env, cwd=ROOT, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    from cxrdask.backbones.hardware import cpu_has_native_bf16

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--precisions", default=None,
                        help="comma-separated (default: fp32, and bf16 where the CPU has it natively)")
    parser.add_argument("--seconds", type=float, default=15.0, help="steady-state time per setting")
    parser.add_argument("--size", type=int, default=224, help="image side")
    parser.add_argument("--out", default="benchmarks/results/bench_compile")
    args = parser.parse_args(argv)
    precisions = (args.precisions.split(",") if args.precisions
                  else ["fp32", "bf16"] if cpu_has_native_bf16() else ["fp32"])
    rows = []
    for precision in precisions:
        eager = measure(precision, False, args.seconds, args.size)
        compiled = measure(precision, True, args.seconds, args.size)
        saved_per_image = 1 / eager["images_per_s"] - 1 / compiled["images_per_s"]
        compile_s = compiled["first_call_s"] - eager["first_call_s"]
        rows.append({
            "precision": precision,
            "eager images/s": round(eager["images_per_s"], 2),
            "compiled images/s": round(compiled["images_per_s"], 2),
            "compile s (first call)": round(compile_s, 1),
            "break-even images per thread": (round(compile_s / saved_per_image)
                                             if saved_per_image > 0 else "never"),
        })
        print(rows[-1], flush=True)
    header = (f"torch.compile (Inductor freezing) against eager, ResNet50 batch 8 at {args.size} px, "
              f"one thread, cold Inductor cache; {machine()}")
    save_results(args.out, rows, header, vars(args))
    print(table(rows, header))


if __name__ == "__main__":
    main()
