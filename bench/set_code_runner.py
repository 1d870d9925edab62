"""Drives the SET authors' truly sparse SET-MLP for one epoch and times its phases (for ``vs_set_code.py``).

Their code is not part of evosparse: Liu, Mocanu et al., "Sparse evolutionary deep learning with over one
million artificial neurons on commodity hardware" (2021), github.com/Shiweiliuiiiiiii/SET-MLP-ONE-MILLION-NEURONS
at commit d36e8f7 (SciPy CSR weights, a Cython back-propagation kernel, the same weight evolution as
dcmocanu/sparse-evolutionary-artificial-neural-networks). docs/benchmarks.md says how to build it on current
Python and the three one-line fixes current NumPy/SciPy need. This driver imports their module from
``--code DIR`` and calls their network's methods in the order their ``fit()`` does for one epoch, timing
separately: train (shuffle + mini-batch loop), evaluation (their ``predict``), evolution (their
``weightsEvolution_II``). The only departure: the float32 data are cast to float64 per batch (their
kernel is typed float64). It prints one ``RESULT`` line. Run it with a Python that has NumPy and SciPy,
never torch: ``OMP_NUM_THREADS=1 python set_code_runner.py --code DIR --workload mnist4000``.
"""

import argparse
import os
import sys
import time
from types import ModuleType

for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")

import numpy as np  # noqa: E402
from memory import status_kib  # noqa: E402  (bench/memory.py: no torch)

#: name: (inputs, hidden width, hidden layers, classes, epsilon, batch, training samples, test samples),
#: the workloads of bench/csr_memory.py.
WORKLOADS = {
    "mnist4000": (784, 4000, 3, 10, 20, 40, 50_000, 10_000),
    "wide30000": (3312, 30_000, 3, 5, 20, 2, 200, 200),
}


def one_hot(rng: np.random.Generator, samples: int, classes: int) -> np.ndarray:
    labels = np.zeros((samples, classes))
    labels[np.arange(samples), rng.integers(0, classes, samples)] = 1
    return labels


def evolution_per_layer(code: ModuleType, network) -> list[float]:
    """Run their weight evolution; their function stamps each layer with datetime.now() (print commented out
    upstream), so the stamps are recorded through a stand-in for their ``datetime`` module."""
    stamps = []
    real = code.datetime

    class Clock:
        @staticmethod
        def now():
            stamps.append(real.datetime.now())
            return stamps[-1]

    code.datetime = type("datetime_stand_in", (), {"datetime": Clock})
    try:
        network.weightsEvolution_II()
    finally:
        code.datetime = real
    return [(stamps[i + 1] - stamps[i]).total_seconds() for i in range(0, len(stamps) - 1, 2)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--code", required=True, help="folder of their set_mlp_sparse_data_structures.py, built")
    parser.add_argument("--workload", choices=sorted(WORKLOADS), default="mnist4000")
    parser.add_argument("--quick", action="store_true", help="widths / 100, 1000 training and test samples")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--zeta", type=float, default=0.3)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--weight-decay", type=float, default=0.0002)
    args = parser.parse_args()
    sys.path.insert(0, os.path.abspath(args.code))
    import set_mlp_sparse_data_structures as code  # their module

    inputs, width, depth, classes, epsilon, batch, train, test = WORKLOADS[args.workload]
    if args.quick:
        width, train, test = width // 100, 1000, 1000
    dimensions = (inputs,) + (width,) * depth + (classes,)
    print(f"{args.workload}: {dimensions}, epsilon {epsilon}, batch {batch}, numpy {np.__version__}", flush=True)

    rng = np.random.default_rng(args.seed)  # random data: time and memory do not depend on the values
    x_train = rng.random((train, inputs), dtype=np.float32)
    x_test = rng.random((test, inputs), dtype=np.float32)
    y_train, y_test = one_hot(rng, train, classes), one_hot(rng, test, classes)

    np.random.seed(args.seed)  # their code draws from NumPy's global generator
    started = time.perf_counter()
    network = code.SET_MLP(dimensions, (code.Relu,) * depth + (code.SoftMax,), epsilon=epsilon)
    init_s = time.perf_counter() - started
    connections = sum(network.w[i].nnz for i in range(1, network.n_layers))
    # The attributes their fit() sets before its loop.
    network.loss = code.CrossEntropy(network.activations[network.n_layers])
    network.learning_rate, network.momentum = args.lr, args.momentum
    network.weight_decay, network.zeta, network.droprate = args.weight_decay, args.zeta, 0.0

    started = time.perf_counter()
    order = np.arange(train)
    np.random.shuffle(order)
    x_shuffled, y_shuffled = x_train[order], y_train[order]
    loss_sum = 0.0
    steps = train // batch
    for step in range(steps):
        rows = slice(step * batch, (step + 1) * batch)
        z, a = network._feed_forward(x_shuffled[rows].astype(np.float64), True)
        loss_sum += network.loss.loss(y_shuffled[rows], a[network.n_layers])
        network._back_prop(z, a, y_shuffled[rows])
    train_s = time.perf_counter() - started

    started = time.perf_counter()
    accuracy, _ = network.predict(x_test, y_test, batch)
    eval_s = time.perf_counter() - started

    started = time.perf_counter()
    per_layer = evolution_per_layer(code, network)
    evolution_s = time.perf_counter() - started
    print(
        f"  train {train_s:.2f} s ({1e3 * train_s / steps:.2f} ms/step), mean loss {loss_sum / steps:.3f}; "
        f"evaluation {eval_s:.2f} s, accuracy {accuracy:.4f}; evolution {evolution_s:.2f} s, per layer "
        f"{[round(t, 2) for t in per_layer]}; init {init_s:.2f} s; {connections} connections"
    )
    print(
        f"RESULT workload={args.workload} train_s={train_s:.3f} steps={steps} evolution_s={evolution_s:.3f} "
        f"eval_s={eval_s:.3f} peak_rss_mib={status_kib('VmHWM') / 1024:.1f} connections={connections}"
    )


if __name__ == "__main__":
    main()
