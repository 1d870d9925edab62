"""evosparse's csr SET against the SET authors' truly sparse code, measured side by side in one run.

Usage: python bench/vs_set_code.py --set-code DIR --set-python PYTHON [--workloads mnist4000,wide30000]
                                   [--rounds 2] [--quick]

Each round runs, for every workload, the SET authors' code (``set_code_runner.py`` under ``--set-python``, a
Python with NumPy and SciPy in which their Cython kernel is built; docs/benchmarks.md says how) and then
evosparse's ``csr_memory.py`` on the same workload, each in its own process with one thread (so each
peak resident set is its own), one after the other. Printed: per round and program the training seconds of one
epoch and per step, the topology update (their "evolution"), the evaluation of the test set and the peak RSS;
then the ratios (their time / ours, their peak / ours) of each figure's best over the rounds. ``--quick`` is
a smoke test (the two programs then train different numbers of steps: compare ``step_ms``). Both train SET
with ε 20 on random data of the workload's shape (50 000 MNIST-shaped samples at batch 40; 200 samples of
3312 features at batch 2).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
FIELDS = ("train_s", "step_ms", "evolution_s", "eval_s", "peak_rss_mib")


def measure(command: list[str], env: dict[str, str]) -> dict[str, float]:
    """Run one program; return the numbers of its ``RESULT`` line."""
    finished = subprocess.run(command, env=env, capture_output=True, text=True, cwd=HERE)
    lines = [line for line in finished.stdout.splitlines() if line.startswith("RESULT ")]
    if finished.returncode != 0 or not lines:
        sys.exit(f"{' '.join(command)} failed (exit {finished.returncode}): {finished.stderr.strip()[-500:]}")
    pairs = dict(item.split("=", 1) for item in lines[-1].split()[1:])
    pairs["step_ms"] = str(1e3 * float(pairs["train_s"]) / float(pairs["steps"]))
    return {name: float(pairs[name]) for name in FIELDS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set-code", required=True, help="folder of their built code")
    parser.add_argument("--set-python", required=True, help="a Python with NumPy and SciPy (not torch)")
    parser.add_argument("--workloads", default="mnist4000,wide30000")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="both programs' --quick (100-fold narrower)")
    args = parser.parse_args()
    set_code, set_python = str(Path(args.set_code).resolve()), str(Path(args.set_python).absolute())
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE.parent / "src"), env.get("PYTHONPATH", "")]))
    quick = ["--quick"] if args.quick else []
    print(f"load average {os.getloadavg()[0]:.1f}; one thread each; seconds and MiB")
    print(f"{'workload':<10} {'round':>5} {'program':<10} " + " ".join(f"{name:>12}" for name in FIELDS))
    best: dict[tuple[str, str], dict[str, float]] = {}
    for round_ in range(1, args.rounds + 1):
        for workload in args.workloads.split(","):
            programs = {
                "SET code": [set_python, "set_code_runner.py", "--code", set_code, "--workload", workload],
                "evosparse": [sys.executable, "csr_memory.py", "--workload", workload, "--threads", "1"],
            }
            for program, command in programs.items():
                result = measure(command + quick, env)
                numbers = " ".join(f"{result[name]:>12.2f}" for name in FIELDS)
                print(f"{workload:<10} {round_:>5} {program:<10} {numbers}", flush=True)
                kept = best.setdefault((workload, program), result)
                for name in FIELDS:
                    kept[name] = min(kept[name], result[name])
    print("each figure's best over the rounds, SET code / evosparse (above 1: evosparse faster or smaller)")
    for workload in args.workloads.split(","):
        theirs, ours = best[(workload, "SET code")], best[(workload, "evosparse")]
        ratios = ", ".join(f"{name} {theirs[name] / ours[name]:.2f}×" for name in FIELDS if ours[name] > 0)
        print(f"  {workload}: {ratios}")


if __name__ == "__main__":
    main()
