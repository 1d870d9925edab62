"""``evosparse compare``: every method × seed on one shared setup, then a summary table and curves.

Each run lives in ``OUT/<method>/seed<k>/`` and is an ordinary ``evosparse train`` run, built from
the same shared settings (data, model, budget, optimizer, epochs) so that only the method differs.
Runs already in ``OUT`` are reused, which is what lets an interrupted comparison continue:

* ``result.json`` present → the run is finished and reused as is;
* a checkpoint but no ``result.json`` → the run is resumed from its last epoch;
* nothing → the run is trained.

A run is reused or resumed only when its checkpoint was made with exactly the requested
configuration (a finished run's folder may have moved); otherwise the comparison stops before any
training with one line naming the first differing setting. We refuse rather than retrain into a
fresh folder, so that a folder always holds the runs its ``summary.json`` describes; and while a
comparison runs, its folder (like each run's) is locked against a second writer.
Outputs: ``summary.json``, ``summary.md``, ``curves.png`` and ``generalisation.png`` (test against
training loss; summary.md has the accuracy at matched training loss, see
:mod:`evosparse.analysis.generalisation`).
"""

from __future__ import annotations

import itertools
import json
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from evosparse.analysis.generalisation import generalisation_markdown, generalisation_summary, plot_generalisation
from evosparse.analysis.plots import save_png
from evosparse.analysis.significance import compare_to_baseline
from evosparse.engine.checkpoint import CHECKPOINT_NAME, load_checkpoint
from evosparse.engine.config import (
    DEFAULT_SEEDS,
    LOCATION_KEYS,
    TrainConfig,
    build_config,
    config_difference,
    parse_param_pairs,
    read_toml,
)
from evosparse.engine.loop import train
from evosparse.engine.lr_schedule import DEFAULT_GAMMA
from evosparse.engine.records import RESULT_NAME
from evosparse.engine.run_folder import locked_folder
from evosparse.engine.run_logging import RunLogging
from evosparse.engine.update_schedule import check_updates
from evosparse.engine.variants import WIDTH_SCALES, base_method, learned_source, run_order, variant_settings
from evosparse.errors import EvosparseError, UsageError
from evosparse.files import atomic_write_text, check_writable
from evosparse.methods import DEFAULTS, get_method
from evosparse.metrics import ACCURACY, epoch_reaching, result_metric, selection_split, spread
from evosparse.models import default_distribution

SUMMARY_SCHEMA = 3
#: summary.json's ``selection``: the split "epoch to target" is read off (test only for runs without validation).
SPLIT_NAMES = {"val": "validation", "test": "test"}
DEFAULT_TARGETS: tuple[float, ...] = (0.97,)
#: Settings that differ between the runs of one comparison; every other setting is shared.
PER_RUN_KEYS = ("method", "params", "seed", "out", "fixed_topology_from", "width_scale")

RunKey = tuple[str, int]


@dataclass(frozen=True)
class Comparison:
    """What one comparison runs: ``methods`` × ``seeds`` on the shared ``settings``.

    ``settings`` holds :class:`TrainConfig` values common to every run (``None``-free; the keys in
    ``PER_RUN_KEYS`` excluded); ``params`` the raw parameter overrides of each method.
    ``run_subfolder`` (e.g. ``f0.6`` for a share of the training set) goes between the method's
    folder and the seed's.
    """

    methods: tuple[str, ...]
    seeds: tuple[int, ...]
    out: Path
    settings: Mapping[str, Any] = field(default_factory=dict)
    params: Mapping[str, Mapping[str, object]] = field(default_factory=dict)
    targets: tuple[float, ...] = DEFAULT_TARGETS
    command: str = ""
    run_subfolder: str = ""
    #: The method whose final masks ``learned-static`` holds (None: the first evolving one listed).
    learned_from: str | None = None
    #: The method every other is tested against (None: the first one listed).
    baseline: str | None = None
    #: TensorBoard / W&B logging of every run (a TensorBoard sub-folder per run).
    logging: RunLogging = RunLogging()

    @property
    def baseline_method(self) -> str:
        return self.baseline or self.methods[0]

    def run_folder(self, method: str, seed: int) -> Path:
        return self.out / method / self.run_subfolder / f"seed{seed}"

    def configs(self) -> dict[RunKey, TrainConfig]:
        """The validated configuration of every run, methods outer (in training order: ``learned-static``
        after its source) and seeds inner (no training)."""
        source = learned_source(self.methods, self.learned_from)
        return {
            (method, seed): build_config(
                None,
                {
                    **self.settings,
                    **variant_settings(method, seed, source, self.run_folder),
                    "method": base_method(method),
                    "seed": seed,
                    "out": str(self.run_folder(method, seed)),
                    "params": dict(self.params.get(method, {})),
                },
            )
            for method in run_order(self.methods)
            for seed in self.seeds
        }


# -- planning: turn command-line input into a Comparison, refusing bad input with one line ------


def parse_methods(methods: str | Sequence[str]) -> tuple[str, ...]:
    """Method names from ``"a,b,c"`` (or a sequence), each registered and listed once."""
    names = [name.strip() for name in (methods.split(",") if isinstance(methods, str) else methods)]
    if not any(names):
        raise UsageError("--methods needs at least one method name, e.g. --methods dense,static,set")
    if "" in names:
        raise UsageError(f"--methods has an empty name in {','.join(names)!r}")
    for name in names:
        get_method(base_method(name))
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise UsageError(f"--methods lists {repeated[0]} more than once")
    return tuple(names)


def seed_list(first: int, count: int) -> tuple[int, ...]:
    """``count`` consecutive seeds starting at ``first``."""
    if count < 1:
        raise UsageError(f"--seeds must be at least 1, got {count}")
    return tuple(range(first, first + count))


def check_targets(targets: Sequence[float]) -> tuple[float, ...]:
    """Target accuracies as fractions in (0, 1], duplicates dropped, order kept."""
    for target in targets:
        if not 0.0 < target <= 1.0:
            raise UsageError(f"--target-acc must be an accuracy in (0, 1], got {target}")
    return tuple(dict.fromkeys(float(t) for t in targets)) or DEFAULT_TARGETS


def flatten_param_table(table: Mapping[str, object]) -> dict[str, object]:
    """A TOML ``[params]`` table with optional ``[params.METHOD]`` sub-tables as ``KEY``/``METHOD.KEY``."""
    flat: dict[str, object] = {}
    for key, value in table.items():
        if isinstance(value, Mapping):
            flat.update({f"{key}.{name}": item for name, item in value.items()})
        else:
            flat[key] = value
    return flat


def distribute_params(methods: Sequence[str], raw: Mapping[str, object]) -> dict[str, dict[str, object]]:
    """Each method's parameter overrides: ``KEY`` goes to every listed method declaring KEY,
    ``METHOD.KEY`` to METHOD only (and wins over ``KEY``); a KEY no listed method declares is refused."""
    per_method: dict[str, dict[str, object]] = {method: {} for method in methods}
    targeted = {key: value for key, value in raw.items() if "." in key}
    for key, value in raw.items():
        if key in targeted:
            continue
        takers = [
            method
            for method in methods
            if key == DEFAULTS.name or key in {p.name for p in get_method(base_method(method)).params}
        ]
        if not takers:
            raise UsageError(f"no method among {', '.join(methods)} has a parameter {key!r}")
        for method in takers:
            per_method[method][key] = value
    for key, value in targeted.items():
        method, _, name = key.partition(".")
        if method not in per_method:
            raise UsageError(f"parameter {key!r} names method {method!r}, which is not among --methods")
        per_method[method][name] = value
    return per_method


def plan_comparison(
    methods: str | Sequence[str],
    *,
    seed_count: int = DEFAULT_SEEDS,
    config_file: Path | None = None,
    overrides: Mapping[str, object] | None = None,
    param_pairs: Sequence[str] = (),
    targets: Sequence[float] = DEFAULT_TARGETS,
    command: str = "",
    learned_from: str | None = None,
    baseline: str | None = None,
    logging: RunLogging = RunLogging(),
) -> Comparison:
    """Build a :class:`Comparison` from CLI-shaped input: TOML file ← flags (``None`` = not given).

    The seeds are ``seed_count`` consecutive seeds from ``seed`` (default 0); ``out`` is required.
    A ``method`` key in the file is replaced by ``methods``. Every run's configuration is validated
    here, so a bad value fails before any training.
    """
    names = parse_methods(methods)
    if baseline is not None and baseline not in names:
        raise UsageError(f"--baseline {baseline} is not among the compared methods ({', '.join(names)})")
    settings: dict[str, Any] = read_toml(config_file) if config_file is not None else {}
    settings.pop("method", None)
    table = settings.pop("params", {})
    if not isinstance(table, Mapping):
        raise UsageError("params must be a table of method parameters")
    settings.update({key: value for key, value in (overrides or {}).items() if value is not None})
    out = settings.pop("out", None)
    if out is None:
        raise UsageError("compare needs --out DIR, the folder that holds (and later reuses) its runs")
    check_writable(Path(str(out)), "--out")
    first_seed = settings.pop("seed", 0)
    if isinstance(first_seed, bool) or not isinstance(first_seed, int):
        raise UsageError(f"seed must be an integer, got {first_seed!r}")
    raw_params = {**flatten_param_table(table), **parse_param_pairs(param_pairs)}
    comparison = Comparison(
        methods=names,
        seeds=seed_list(first_seed, seed_count),
        out=Path(str(out)),
        settings=settings,
        params=distribute_params(names, raw_params),
        targets=check_targets(targets),
        command=command,
        learned_from=learned_from,
        baseline=baseline,
        logging=logging,
    )
    logging.check()
    comparison.configs()
    return comparison


# -- running: train, resume or reuse each run ----------------------------------------------------


def existing_state(config: TrainConfig) -> str:
    """``"new"``, ``"resume"`` or ``"reuse"`` for the run folder of ``config``; refuses a folder whose
    run was made with other settings (or cannot be checked), and one that must be written but cannot.

    A finished run is recognised wherever its folder now lies (``LOCATION_KEYS`` are not compared); an
    unfinished one resumes only where it was started, as ``evosparse train --resume`` requires.
    """
    folder = Path(str(config.out))
    has_result, has_checkpoint = (folder / RESULT_NAME).exists(), (folder / CHECKPOINT_NAME).exists()
    if not has_result:
        check_writable(folder, "run folder")
    if not has_checkpoint:
        if has_result:
            raise UsageError(
                f"{folder} holds result.json but no {CHECKPOINT_NAME}, so its settings cannot be checked; "
                "delete that folder or choose another --out"
            )
        return "new"
    saved = load_checkpoint(folder / CHECKPOINT_NAME).get("config", {})
    difference = config_difference(saved, config, ignore=LOCATION_KEYS if has_result else ())
    if difference:
        key, before, now = difference
        raise UsageError(
            f"{folder} holds a run made with {key}={before!r}, but this comparison asks for "
            f"{now!r}; choose another --out (or delete that folder) to run with the new settings"
        )
    return "reuse" if has_result else "resume"


def read_result(folder: Path) -> dict[str, Any]:
    """A finished run's result.json, or a one-line error when it is unreadable."""
    try:
        return json.loads((folder / RESULT_NAME).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UsageError(f"{folder / RESULT_NAME} is unreadable ({error}); delete that folder to rerun it") from None


def run_one(config: TrainConfig, state: str, progress: bool, logging: RunLogging = RunLogging()) -> dict[str, Any]:
    """Reuse, resume or train one run; a failure is reported with the run's method and seed."""
    if state == "reuse":
        return read_result(Path(str(config.out)))
    try:
        return train(config, resume=state == "resume", progress=progress, logging=logging)
    except EvosparseError as error:
        raise type(error)(f"{config.method} seed {config.seed}: {error}") from None


def run_comparison(
    comparison: Comparison, *, progress: bool = True, report: Callable[[str], None] = lambda line: None
) -> dict[str, Any]:
    """Run (or reuse) every run of ``comparison``, then write and return its summary.

    Every folder is checked before any training, so changed settings fail at once; ``report``
    receives one line per run (``[2/6] set seed 1: trained, final accuracy 0.9531``).
    """
    with locked_folder(comparison.out):
        [summary] = run_comparisons([comparison], progress=progress, report=report)
        write_outputs(comparison.out, summary)
    return summary


def run_comparisons(
    comparisons: Sequence[Comparison], *, progress: bool = True, report: Callable[[str], None] = lambda line: None
) -> list[dict[str, Any]]:
    """Run (or reuse) every run of several comparisons and return their summaries (writing none).

    Every folder of every comparison is checked before any training, so changed settings fail at once,
    and so is every run's schedule (a dense-to-sparse method that would end dense is refused).
    """
    configs = [comparison.configs() for comparison in comparisons]
    states = [{key: existing_state(config) for key, config in runs.items()} for runs in configs]
    for runs in configs:
        for config in runs.values():
            check_updates(config)
    numbers = itertools.count(1)
    total = sum(map(len, configs))
    verbs = {"new": "trained", "resume": "resumed", "reuse": "reused"}
    summaries = []
    for comparison, runs, run_states in zip(comparisons, configs, states):
        results: dict[RunKey, dict[str, Any]] = {}
        for (method, seed), config in runs.items():
            run_logging = comparison.logging.below(
                comparison.run_folder(method, seed).relative_to(comparison.out).as_posix()
            )
            results[(method, seed)] = run_one(config, run_states[(method, seed)], progress, run_logging)
            where = " ".join(filter(None, (method, comparison.run_subfolder, f"seed {seed}")))
            report(
                f"[{next(numbers)}/{total}] {where}: {verbs[run_states[(method, seed)]]}, "
                f"final {result_metric(results[(method, seed)]).label} {results[(method, seed)]['final_test_acc']:.4f}"
            )
        summaries.append(summarize(comparison, runs, results))
    return summaries


# -- summarising ---------------------------------------------------------------------------------


def target_key(target: float) -> str:
    return f"{target:g}"


def per_epoch_seconds(result: Mapping[str, Any], *, topology_only: bool) -> float:
    """Mean seconds per epoch: training plus topology updates, or topology updates alone."""
    epochs = result["epochs"]
    if topology_only:
        return statistics.fmean(e["topology_time_s"] for e in epochs)
    return statistics.fmean(e["train_time_s"] + e["topology_time_s"] for e in epochs)


def step_time_ratio(result: Mapping[str, Any]) -> float | None:
    """Mean over epochs of the time per training step (topology updates included) divided by the dense
    model's step time measured right after that epoch in the same process (:mod:`~evosparse.engine.reference_step`):
    a speed that changes of machine load between runs do not distort. None for runs without the reference."""
    steps = result.get("steps_per_epoch")
    epochs = result["epochs"]
    if not steps or any(e.get("reference_step_s") is None for e in epochs):
        return None
    return statistics.fmean((e["train_time_s"] + e["topology_time_s"]) / steps / e["reference_step_s"] for e in epochs)


def spread_of_all(values: Sequence[float | None]) -> dict[str, Any] | None:
    """:func:`spread` of the values, or None when a run lacks the number (made by an older evosparse)."""
    present = [value for value in values if value is not None]
    return spread(present) if len(present) == len(values) else None


def relative_cost(results: Sequence[Mapping[str, Any]], key: str) -> dict[str, Any] | None:
    """The spread over runs of ``result[key]["relative"]`` (training or inference cost relative to dense)."""
    return spread_of_all([(result.get(key) or {}).get("relative") for result in results])


def method_summary(
    results: Sequence[Mapping[str, Any]], folders: Sequence[str], targets: Sequence[float], split: str = "val"
) -> dict[str, Any]:
    """One method's numbers over its seeds, and its mean ± std test accuracy curve.

    "Epoch to target" is read off the ``split`` (``"val"`` or ``"test"``) accuracy curves;
    ``selected_acc`` is the test accuracy at each run's validation-selected epoch (None when a run has
    no validation split); ``best_acc`` (the best test epoch) is for information only.
    ``final_bits_per_char`` and ``selected_bits_per_char`` are the test loss of a character model in bits
    per character after the last and at the selected epoch (None for other runs, and when a run lacks it).
    """
    curves = [[e["test_acc"] for e in result["epochs"]] for result in results]
    if len({len(curve) for curve in curves}) != 1:
        raise EvosparseError(f"the runs {', '.join(folders)} have different numbers of epochs")
    by_epoch = [spread(column) for column in zip(*curves)]
    target_curves = [[e[f"{split}_acc"] for e in result["epochs"]] for result in results]
    mean_target_curve = [statistics.fmean(column) for column in zip(*target_curves)]
    selected = [r["test_acc_at_selected"] for r in results if r.get("test_acc_at_selected") is not None]
    every_selected = len(selected) == len(results)
    return {
        "method_params": results[0]["method_params"],
        "runs": list(folders),
        "architecture": results[0]["architecture"],
        "final_acc": spread([r["final_test_acc"] for r in results]),
        "selected_acc": spread(selected) if every_selected else None,
        "selected_epoch": [r["selected_epoch"] for r in results] if every_selected else None,
        "best_acc": spread([r["best_test_acc"] for r in results]),
        "final_bits_per_char": spread_of_all([r.get("final_test_bits_per_char") for r in results]),
        "selected_bits_per_char": spread_of_all([r.get("test_bits_per_char_at_selected") for r in results]),
        "ara": spread([r["ara"] for r in results]),
        "epoch_to_target": {
            target_key(target): {
                "mean_curve": epoch_reaching(mean_target_curve, target),
                "runs": [epoch_reaching(curve, target) for curve in target_curves],
            }
            for target in targets
        },
        "params_active": spread([r["params_active"] for r in results]),
        "params_dense": results[0]["params_dense"],
        "density_final": spread([r["density_final"] for r in results]),
        "time_per_epoch_s": spread([per_epoch_seconds(r, topology_only=False) for r in results]),
        "topology_time_per_epoch_s": spread([per_epoch_seconds(r, topology_only=True) for r in results]),
        "step_time_ratio": spread_of_all([step_time_ratio(result) for result in results]),
        "training_macs_relative": relative_cost(results, "training_macs"),
        "inference_macs_relative": relative_cost(results, "inference_macs"),
        "curve": {"mean": [point["mean"] for point in by_epoch], "std": [point["std"] for point in by_epoch]},
    }


def summarize(
    comparison: Comparison, configs: Mapping[RunKey, TrainConfig], results: Mapping[RunKey, Mapping[str, Any]]
) -> dict[str, Any]:
    """The content of summary.json: the shared setup, and each method's numbers over the seeds.

    ``metric`` names what the accuracy fields hold; targets (accuracies) apply only to accuracy.
    """
    first = next(iter(configs.values())).to_dict()
    metric = result_metric(next(iter(results.values())))
    targets = comparison.targets if metric == ACCURACY else ()
    unscaled = [result for result in results.values() if not result.get("width_scaling")]
    split = "val" if all(selection_split(result) == "val" for result in results.values()) else "test"
    return {
        "schema": SUMMARY_SCHEMA,
        "selection": SPLIT_NAMES[split],
        "command": comparison.command,
        "setup": {key: value for key, value in first.items() if key not in PER_RUN_KEYS},
        "architecture": (unscaled or list(results.values()))[0]["architecture"],
        "metric": metric.name,
        "seeds": list(comparison.seeds),
        "targets": list(targets),
        "methods": {
            method: method_summary(
                [results[(method, seed)] for seed in comparison.seeds],
                [
                    comparison.run_folder(method, seed).relative_to(comparison.out).as_posix()
                    for seed in comparison.seeds
                ],
                targets,
                split,
            )
            for method in comparison.methods
        },
        "statistics": seed_statistics(
            comparison.methods, comparison.seeds, results, metric.higher_is_better, comparison.baseline_method
        ),
        "generalisation": generalisation_summary(
            {method: [results[(method, seed)] for seed in comparison.seeds] for method in comparison.methods}
        ),
    }


def seed_statistics(
    methods: Sequence[str],
    seeds: Sequence[int],
    results: Mapping[RunKey, Mapping[str, Any]],
    higher_is_better: bool,
    baseline: str,
) -> dict[str, Any]:
    """Confidence intervals and Welch tests against ``baseline`` (:mod:`evosparse.analysis.significance`)
    of the headline number: ``on`` names it — the test value at the validation-selected epoch when every
    run has one, else the final test value."""
    selected = all(result.get("test_acc_at_selected") is not None for result in results.values())
    on = "test_acc_at_selected" if selected else "final_test_acc"
    values = {method: [results[(method, seed)][on] for seed in seeds] for method in methods}
    return {"on": on, **compare_to_baseline(values, baseline, higher_is_better)}


# -- writing -------------------------------------------------------------------------------------


def plus_minus(stats: Mapping[str, Any] | None) -> str:
    """``mean ± std`` of a :func:`spread`, ``—`` for a number the runs do not have."""
    return "—" if stats is None else f"{stats['mean']:.4f} ± {stats['std']:.4f}"


def mean_text(stats: Mapping[str, Any] | None, digits: int = 4) -> str:
    """The mean of a :func:`spread` with ``digits`` decimals, ``—`` for a number the runs do not have."""
    return "—" if stats is None else f"{stats['mean']:.{digits}f}"


def reached_text(entry: Mapping[str, Any]) -> str:
    runs = entry["runs"]
    epoch = entry["mean_curve"]
    return f"{'never' if epoch is None else epoch} ({sum(e is not None for e in runs)}/{len(runs)})"


#: summary.json's bits-per-character entries of a method and their column headers in summary.md.
BITS_COLUMNS = {
    "final_bits_per_char": "final test bits/char",
    "selected_bits_per_char": "test bits/char at val-selected epoch",
}


def bits_columns(summary: Mapping[str, Any]) -> list[str]:
    """The :data:`BITS_COLUMNS` some method of the comparison has numbers for (none unless it ran on text)."""
    return [name for name in BITS_COLUMNS if any(entry.get(name) for entry in summary["methods"].values())]


def markdown_table(summary: Mapping[str, Any]) -> str:
    """The comparison as a Markdown table, one row per method; character models on text add their test
    loss in bits per character, final and at the val-selected epoch."""
    targets = [target_key(t) for t in summary["targets"]]
    metric = result_metric(summary)
    bits = bits_columns(summary)
    header = [
        "method",
        f"final {metric.short}",
        f"{metric.short} at val-selected epoch",
        f"best test {metric.short} (info)",
        *(BITS_COLUMNS[name] for name in bits),
        "ARA",
        *(f"epoch to {t}" for t in targets),
        "active params",
        "train FLOPs ×dense",
        "inference FLOPs ×dense",
        "s/epoch",
        "topology s/epoch",
        "step time ×dense step",
    ]
    rows = [
        [
            method,
            plus_minus(entry["final_acc"]),
            plus_minus(entry.get("selected_acc")),
            plus_minus(entry["best_acc"]),
            *(plus_minus(entry.get(name)) for name in bits),
            plus_minus(entry["ara"]),
            *(reached_text(entry["epoch_to_target"][t]) for t in targets),
            f"{round(entry['params_active']['mean']):,}",
            mean_text(entry.get("training_macs_relative")),
            mean_text(entry.get("inference_macs_relative")),
            f"{entry['time_per_epoch_s']['mean']:.3f}",
            f"{entry['topology_time_per_epoch_s']['mean']:.4f}",
            mean_text(entry.get("step_time_ratio"), digits=2),
        ]
        for method, entry in summary["methods"].items()
    ]
    lines = [header, ["---"] * len(header), *rows]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in lines) + "\n"


#: How the statistics section names the number it tests.
STATISTIC_NAMES = {"test_acc_at_selected": "at the validation-selected epoch", "final_test_acc": "after the last epoch"}


def statistics_markdown(summary: Mapping[str, Any]) -> str:
    """The section of summary.md that says which differences are more than seed noise (and which are not)."""
    section = summary["statistics"]
    baseline, label = section["baseline"], result_metric(summary).label
    rows = [["method", f"mean {label} [95% CI]", f"p vs {baseline}", "reading"], ["---"] * 4]
    for method, entry in section["methods"].items():
        interval = "" if entry["ci95"] is None else f" [{entry['ci95'][0]:.4f}, {entry['ci95'][1]:.4f}]"
        p = "" if entry["p"] is None else f"{entry['p']:.3g}"
        reading = {
            "baseline": "baseline",
            "not distinguishable": f"not distinguishable from {baseline}",
            "lower": f"lower than {baseline}",
            "higher": f"higher than {baseline}",
            "not testable": "one seed: no test",
        }[entry["verdict"]]
        rows.append([method, f"{entry['mean']:.4f}{interval}", p, reading])
    table = "\n".join("| " + " | ".join(cells) + " |" for cells in rows)
    return (
        f"### Differences beyond seed noise\n\nTest {label} {STATISTIC_NAMES[section['on']]}: mean over the "
        f"{len(summary['seeds'])} seed(s) with its 95% confidence interval (Student t), and Welch's two-sided "
        f"t-test against the baseline, {baseline}. Below p = 0.05 the difference is called "
        "lower/higher; otherwise the two are not distinguishable with these seeds, whatever their means. "
        "The p-values are not corrected for testing several methods.\n\n" + table + "\n\n"
    )


def budget_text(summary: Mapping[str, Any]) -> str:
    """The shared budget in words: ``ε 20``, ``density 0.05``, or ``no budget`` when no method of the
    comparison takes one and none was given (dense, the switcher)."""
    setup = summary["setup"]
    if setup["epsilon"] is not None:
        return f"ε {setup['epsilon']}"
    if setup["density"] is None and not any(_takes_budget(name) for name in summary["methods"]):
        return "no budget"
    return f"density {setup['density'] if setup['density'] is not None else TrainConfig.DEFAULT_DENSITY}"


def _takes_budget(name: str) -> bool:
    """Whether the method or variant ``name`` depends on the density: a sparse method that needs a budget,
    or a dense baseline sized by it (``small-dense``, ``wide-dense``)."""
    if name in WIDTH_SCALES:
        return True
    method = get_method(base_method(name))
    return method.sparse and method.needs_budget


def schedule_text(setup: Mapping[str, Any]) -> str:
    """The learning-rate schedule in words, e.g. `` (cosine, 2 warm-up epochs)``; ``""`` for a constant rate
    without warm-up (and for comparisons made before schedules existed)."""
    name, warmup = setup.get("lr_schedule", "constant"), setup.get("warmup_epochs", 0)
    words = [] if name == "constant" else [name]
    if name == "step":
        gamma = DEFAULT_GAMMA if setup["lr_gamma"] is None else setup["lr_gamma"]
        words.append(f"×{gamma:g} after epochs {','.join(map(str, setup['lr_milestones']))}")
    if warmup:
        words.append(f"{warmup} warm-up epoch(s)")
    return f" ({', '.join(words)})" if words else ""


def setup_line(summary: Mapping[str, Any]) -> str:
    """The shared setup in one sentence: data, model, budget, optimisation, seeds."""
    setup = summary["setup"]
    share = setup.get("train_fraction", 1.0)
    return (
        f"{setup['dataset']}{'' if share == 1.0 else f' ({share * 100:g}% of the training set)'}, "
        f"{setup['model']} {'-'.join(map(str, summary['architecture']))}, "
        f"{budget_text(summary)} ({setup['distribution'] or default_distribution(setup['model'])}), "
        f"{setup['epochs']} epochs, {setup['optimizer']} lr {setup['lr']}{schedule_text(setup)}, "
        f"batch {setup['batch_size']}, "
        f"seeds {', '.join(map(str, summary['seeds']))}."
    )


TARGETS_NOTE = (
    "*Epoch to T*: first epoch at which the mean {split} accuracy curve reaches T (in brackets: how many runs "
    "reach it on their own). "
)
SELECTION_NOTE = (
    "Every column but *epoch to T* is measured on the test set. *At val-selected epoch*: at each run's epoch "
    "of best validation {label} (— for runs without a validation split); *best test (info)* picks the epoch "
    "on the test set itself, an optimistic bound rather than a result. "
)
BITS_NOTE = (
    "*Bits/char*: the test loss (cross-entropy of the next character) in bits per character, nats / ln 2; "
    "lower is better. "
)


def render_markdown(summary: Mapping[str, Any]) -> str:
    """summary.md: the command that produced it, the setup, the table, how to read it, the curves."""
    seeds = summary["seeds"]
    return (
        "# Comparison\n\n"
        f"```\n{summary['command']}\n```\n\n"
        f"{setup_line(summary)}\n\n"
        + markdown_table(summary)
        + f"\nMean ± sample standard deviation over {len(seeds)} seed(s). "
        + SELECTION_NOTE.format(label=result_metric(summary).label)
        + (BITS_NOTE if bits_columns(summary) else "")
        + (TARGETS_NOTE.format(split=summary.get("selection", "test")) if summary["targets"] else "")
        + "*FLOPs ×dense*: training multiply-adds over the whole run (RigL's count: forward, input and weight "
        "gradients, dense weight gradients where a method records them) and inference multiply-adds per sample "
        "of the final model, relative to the dense network. *s/epoch*: training plus topology updates, without "
        "evaluation; *topology s/epoch*: the topology updates alone; both move with the machine's load. *Step "
        "time ×dense step*: each epoch's time per step divided by a dense step of the same architecture timed "
        "right after it in the same process, which cancels load changes between runs.\n\n"
        + statistics_markdown(summary)
        + "![test accuracy per epoch](curves.png)\n\n"
        + generalisation_markdown(summary["generalisation"], metric_label=result_metric(summary).label)
    )


def plot_comparison(path: Path, summary: Mapping[str, Any]) -> None:
    """curves.png: each method's mean test accuracy per epoch with a ±1 std band."""
    figure = Figure(figsize=(8, 4.5), layout="constrained")
    axis = figure.subplots()
    palette = colormaps["tab10"]
    for index, (method, entry) in enumerate(summary["methods"].items()):
        mean, std = entry["curve"]["mean"], entry["curve"]["std"]
        epochs = range(1, len(mean) + 1)
        color, style = palette(index % 10), ("-", "--", ":")[index // 10 % 3]
        axis.plot(epochs, mean, label=method, color=color, linestyle=style)
        low, high = [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)]
        axis.fill_between(epochs, low, high, color=color, alpha=0.2, linewidth=0)
    setup = summary["setup"]
    title = f"{setup['dataset']}, {budget_text(summary)}: mean ± std over {len(summary['seeds'])} seed(s)"
    axis.set(xlabel="epoch", ylabel=f"test {result_metric(summary).label}", title=title)
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.grid(alpha=0.3)
    axis.legend(loc="center left", bbox_to_anchor=(1.01, 0.5))
    save_png(figure, path)


def generalisation_title(summary: Mapping[str, Any]) -> str:
    """The title of generalisation.png: data, budget and how many seeds each point averages."""
    setup = summary["setup"]
    return f"{setup['dataset']}, {budget_text(summary)}: mean over {len(summary['seeds'])} seed(s) per epoch"


def write_outputs(out: Path, summary: Mapping[str, Any]) -> None:
    """Write summary.json, summary.md, curves.png and generalisation.png atomically into ``out``."""
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    atomic_write_text(out / "summary.md", render_markdown(summary))
    plot_comparison(out / "curves.png", summary)
    plot_generalisation(out / "generalisation.png", summary["generalisation"], generalisation_title(summary))
