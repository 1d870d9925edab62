"""The GPU check: every method on every backend trains on digits on the GPU as on the CPU, and resumes exactly.

``bash scripts/gpu-check.sh`` (or ``python scripts/gpu_check.py``) runs, in this order:

1. the device-parametrised tests (``tests/test_devices.py`` and the CUDA cases elsewhere) with CUDA present;
2. ``evosparse train`` of every method on every backend that takes it (masked; csr; condensed for static,
   srigl and SET per neuron) for ``--epochs`` epochs of digits, once on the CPU and once on ``--device``,
   printing both runs' final accuracies side by side with their difference;
3. a run on ``--device`` killed by SIGKILL after its first checkpoint and resumed, compared with the
   uninterrupted run of step 2;
4. ``bench/gpu.py --quick`` on ``--device``: step time, peak memory and SET update time of dense, masked and
   csr on a small grid, and a LeNet-300-100 epoch (tables of its own; the full benchmark is ``bench/gpu.py``);
5. ``bench/condensed.py`` on ``--device`` at batch 256, densities 0.1 and 0.05, widths 2048–8192: the
   condensed layer's training step and inference against dense and csr (issue 22's GPU goal).

It prints one table (and the benchmark's) and exits 1 when a run fails, a resumed run differs from the
uninterrupted one, an accuracy differs from the CPU's by more than ``--tolerance``, or a benchmark fails. On
a machine without CUDA it says so and stops (``--device cpu`` runs steps 2 to 5 against the CPU itself, to check
the script).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from evosparse.backends.registry import BACKENDS  # noqa: E402  (the checkout's own package, found through src/)
from evosparse.errors import UsageError  # noqa: E402
from evosparse.methods import METHODS  # noqa: E402
from evosparse.sparsifier import check_backend  # noqa: E402

#: The benchmarks run on the device after the training runs: ``bench/gpu.py``'s quick grid, and the
#: condensed layer against dense and csr where issue 22 sets its GPU goal (inference at 90% sparsity,
#: batch 256, at least 1.5x dense).
BENCHMARKS = (
    ("gpu.py", "--quick", "--data", "synthetic"),
    ("condensed.py", "--widths", "2048,4096,8192", "--densities", "0.1,0.05", "--batches", "256", "--repeats", "5"),
)


def runs_to_check() -> list[tuple[str, str, tuple[str, ...]]]:
    """(method, backend, extra arguments) of every run: each registered method on every backend that takes
    it with its defaults, and SET per neuron on every backend (the only way SET runs on condensed)."""
    runs = []
    for name, cls in sorted(METHODS.items()):
        defaults = {param.name: param.default for param in cls.params}
        for backend in BACKENDS:
            variants: list[tuple[dict, tuple[str, ...]]] = [({}, ())]
            if "per_neuron" in defaults:
                variants.append(({"per_neuron": True}, ("--param", "per_neuron=true")))
            for change, extra in variants:
                try:
                    check_backend(cls, backend, {**defaults, **change})
                except UsageError:
                    continue
                runs.append((name, backend, extra))
    return runs


def schedule_args(method: str) -> list[str]:
    """Methods that act every N optimizer steps (RigL, GMP) act every 20 here: a short run still evolves."""
    defaults = {param.name: param.default for param in METHODS[method].params}
    return ["--param", "update_interval=20"] if defaults.get("update_unit") == "step" else []


def train(out: Path, method: str, backend: str, device: str, epochs: int, *extra: str) -> subprocess.Popen:
    """Start ``evosparse train`` of ``method`` on digits in a child process writing ``out`` (its output goes
    to ``out``.log beside it)."""
    command = [
        sys.executable, "-m", "evosparse", "train", "--dataset", "digits", "--method", method, "--backend", backend,
        "--device", device, "--epochs", str(epochs), "--density", "0.1", "--seed", "0", "--no-progress",
        "--out", str(out), *schedule_args(method), *extra,
    ]  # fmt: skip
    environment = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    with open(out.with_name(out.name + ".log"), "a") as log:
        return subprocess.Popen(command, env=environment, stdout=log, stderr=subprocess.STDOUT)


def accuracies(out: Path) -> list[float] | None:
    """The per-epoch test accuracies of a finished run, or None when it did not finish."""
    path = out / "result.json"
    if not path.exists():
        return None
    return [epoch["test_acc"] for epoch in json.loads(path.read_text())["epochs"]]


def killed_and_resumed(
    out: Path, method: str, backend: str, device: str, epochs: int, *extra: str
) -> list[float] | None:
    """Train on ``device``, SIGKILL the run once its first checkpoint exists, resume it; its accuracies."""
    child = train(out, method, backend, device, epochs, *extra)
    checkpoint = out / "checkpoint.pt"
    while child.poll() is None and not checkpoint.exists():
        time.sleep(0.01)
    if child.poll() is None:
        child.send_signal(signal.SIGKILL)
    child.wait()
    train(out, method, backend, device, epochs, *extra, "--resume-if-present").wait()
    return accuracies(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="the device checked against the CPU (default cuda)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs of digits per run (default 3)")
    parser.add_argument("--tolerance", type=float, default=0.02, help="largest accuracy difference to the CPU")
    parser.add_argument("--skip-tests", action="store_true", help="skip the pytest step")
    args = parser.parse_args()
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            print("gpu-check: no CUDA device here; nothing was checked (CI is CPU-only by design)")
            return 2
        print(f"gpu-check on {torch.cuda.get_device_name()} (torch {torch.__version__}, CUDA {torch.version.cuda})")
    failures = 0
    if not args.skip_tests:
        tests = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=", "-k", "cuda or device"],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
            check=False,
        )
        failures += tests.returncode != 0
    rows = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as scratch:
        base = Path(scratch)
        for method, backend, extra in runs_to_check():
            name = f"{method}{'-per-neuron' if extra else ''}-{backend}"
            children = {
                where: train(base / f"{name}-{where}", method, backend, device, args.epochs, *extra)
                for where, device in (("cpu", "cpu"), ("device", args.device))
            }
            for child in children.values():
                child.wait()
            cpu, device = accuracies(base / f"{name}-cpu"), accuracies(base / f"{name}-device")
            resumed = killed_and_resumed(base / f"{name}-resumed", method, backend, args.device, args.epochs, *extra)
            ok = (
                cpu is not None
                and device is not None
                and abs(cpu[-1] - device[-1]) <= args.tolerance
                and resumed == device
            )
            failures += not ok
            exact = resumed == device and device is not None
            rows.append((f"{method}{'*' if extra else ''}", backend, cpu, device, exact, ok))
    print(f"\n{'method':12} {'backend':7} {'cpu acc':>8} {args.device + ' acc':>9} {'diff':>7}  resume  ok")
    for method, backend, cpu, device, resume_exact, ok in rows:
        cpu_text = f"{cpu[-1]:.4f}" if cpu else "failed"
        device_text = f"{device[-1]:.4f}" if device else "failed"
        diff = f"{device[-1] - cpu[-1]:+.4f}" if cpu and device else ""
        print(
            f"{method:12} {backend:7} {cpu_text:>8} {device_text:>9} {diff:>7}  "
            f"{'exact' if resume_exact else 'DIFF':6}  {'yes' if ok else 'NO'}"
        )
    print(f"{len(rows)} runs compared in {time.perf_counter() - started:.0f} s (* SET per neuron)", flush=True)
    for script, *options in BENCHMARKS:
        bench = subprocess.run(
            [sys.executable, str(ROOT / "bench" / script), *options, "--device", args.device],
            cwd=ROOT / "bench",
            env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
            check=False,
        )
        failures += bench.returncode != 0
    print(f"gpu-check done in {time.perf_counter() - started:.0f} s; {failures} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
