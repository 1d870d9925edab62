"""`evosparse compare`: same setup for every method, summaries that match the runs, reuse of finished runs."""

from __future__ import annotations

import json
import shutil
import statistics
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from evosparse.analysis.significance import compare_to_baseline
from evosparse.cli import main
from evosparse.engine import compare, loop
from evosparse.engine.checkpoint import load_checkpoint
from evosparse.engine.compare import PER_RUN_KEYS, distribute_params, plan_comparison
from evosparse.errors import EvosparseError, UsageError
from evosparse.metrics import epoch_reaching

METHODS = ("static", "set")
SEEDS = (0, 1)


def compare_args(out: Path, *extra: str) -> list[str]:
    """A small comparison on digits: 2 methods × 2 seeds, 2 epochs, a 64-16-8-10 MLP at density 0.5."""
    return [
        "compare",
        "--methods",
        ",".join(METHODS),
        "--seeds",
        "2",
        "--epochs",
        "2",
        "--hidden",
        "16,8",
        "--density",
        "0.5",
        "--out",
        str(out),
        "--no-progress",
        *extra,
    ]


def run_cli(args, capsys):
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(autouse=True)
def _no_per_run_plots(monkeypatch):
    """Each run's own curves.png is `train`'s business (tested there); skipping it keeps these tests fast."""
    monkeypatch.setattr(loop, "plot_run_curves", lambda *args, **kwargs: None)


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """One complete comparison, shared by the tests that only read it or are refused before training."""
    out = tmp_path_factory.mktemp("cmp") / "out"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(loop, "plot_run_curves", lambda *args, **kwargs: None)
        assert main(compare_args(out, "--target-acc", "0.5", "--target-acc", "0.99")) == 0
    return out


def run_results(out: Path) -> dict[tuple[str, int], dict]:
    return {(m, s): json.loads((out / m / f"seed{s}" / "result.json").read_text()) for m in METHODS for s in SEEDS}


def test_summary_numbers_are_recomputed_from_the_runs(finished):
    summary = json.loads((finished / "summary.json").read_text())
    results = run_results(finished)
    assert list(summary["methods"]) == list(METHODS) and summary["seeds"] == list(SEEDS)
    assert summary["selection"] == "validation"
    for method in METHODS:
        runs = [results[(method, seed)] for seed in SEEDS]
        entry = summary["methods"][method]
        assert entry["runs"] == [f"{method}/seed{seed}" for seed in SEEDS]
        for key, field in (("final_acc", "final_test_acc"), ("best_acc", "best_test_acc"), ("ara", "ara")):
            values = [run[field] for run in runs]
            assert entry[key]["mean"] == pytest.approx(sum(values) / len(values))
            assert entry[key]["std"] == pytest.approx(statistics.stdev(values))
        curves = [[e["test_acc"] for e in run["epochs"]] for run in runs]
        assert entry["curve"]["mean"] == pytest.approx([sum(column) / len(column) for column in zip(*curves)])
        selected = [run["test_acc_at_selected"] for run in runs]
        assert entry["selected_acc"]["values"] == selected and None not in selected
        assert entry["selected_epoch"] == [run["selected_epoch"] for run in runs]
        val_curves = [[e["val_acc"] for e in run["epochs"]] for run in runs]  # epoch to target reads validation
        mean_val_curve = [sum(column) / len(column) for column in zip(*val_curves)]
        for target in (0.5, 0.99):
            reached = entry["epoch_to_target"][f"{target:g}"]
            assert reached["runs"] == [epoch_reaching(curve, target) for curve in val_curves]
            assert reached["mean_curve"] == epoch_reaching(mean_val_curve, target)
        seconds = [statistics.fmean(e["train_time_s"] + e["topology_time_s"] for e in run["epochs"]) for run in runs]
        assert entry["time_per_epoch_s"]["mean"] == pytest.approx(statistics.fmean(seconds))
        assert entry["params_active"]["mean"] == pytest.approx(statistics.fmean(r["params_active"] for r in runs))


def test_every_method_gets_the_same_data_model_budget_and_seeds(finished):
    configs = {
        (m, s): load_checkpoint(finished / m / f"seed{s}" / "checkpoint.pt")["config"] for m in METHODS for s in SEEDS
    }
    shared = [{k: v for k, v in config.items() if k not in PER_RUN_KEYS} for config in configs.values()]
    assert all(setup == shared[0] for setup in shared)
    assert shared[0]["epochs"] == 2 and shared[0]["density"] == 0.5 and shared[0]["hidden"] == [16, 8]
    assert {(c["method"], c["seed"]) for c in configs.values()} == set(configs)
    results = run_results(finished)
    assert len({r["params_active"] for r in results.values()}) == 1  # static and SET keep the same exact budget
    assert len({tuple(r["architecture"]) for r in results.values()}) == 1
    assert results[("static", 0)]["epochs"][0]["test_acc"] != results[("static", 1)]["epochs"][0]["test_acc"]


def test_markdown_and_curves(finished):
    text = (finished / "summary.md").read_text()
    summary = json.loads((finished / "summary.json").read_text())
    assert summary["command"].startswith("evosparse compare --methods static,set --seeds 2")
    assert f"```\n{summary['command']}\n```" in text.split("|")[0]  # the command comes before the table
    for method in METHODS:
        entry = summary["methods"][method]
        row = next(line for line in text.splitlines() if line.startswith(f"| {method} |"))
        assert f"{entry['final_acc']['mean']:.4f} ± {entry['final_acc']['std']:.4f}" in row
        assert f"{entry['selected_acc']['mean']:.4f} ± {entry['selected_acc']['std']:.4f}" in row
        assert f"{round(entry['params_active']['mean']):,}" in row
    assert "epoch to 0.5" in text and "epoch to 0.99" in text and "mean validation accuracy curve" in text
    header = next(line for line in text.splitlines() if line.startswith("| method"))
    assert "| acc at val-selected epoch |" in header and "| best test acc (info) |" in header
    assert "bits/char" not in text and summary["methods"]["set"]["final_bits_per_char"] is None  # not text
    assert (finished / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


class Boom(EvosparseError):
    pass


def test_an_interrupted_comparison_continues_and_reuses_finished_runs(tmp_path, monkeypatch, capsys, finished):
    out = tmp_path / "out"
    real_epoch = loop.Trainer.train_epoch

    def crash_in_the_last_run(self, epoch, on_step):
        if (self.config.method, self.config.seed, epoch) == ("set", 1, 2):
            raise Boom("killed")
        return real_epoch(self, epoch, on_step)

    monkeypatch.setattr(loop.Trainer, "train_epoch", crash_in_the_last_run)
    code, _, stderr = run_cli(compare_args(out), capsys)
    assert code == 1 and stderr.splitlines()[-1] == "evosparse: error: set seed 1: killed"
    assert "Traceback" not in stderr
    finished_runs = [out / m / f"seed{s}" / "result.json" for m, s in [("static", 0), ("static", 1), ("set", 0)]]
    stamps = [path.stat().st_mtime_ns for path in finished_runs]
    assert not (out / "set" / "seed1" / "result.json").exists() and (out / "set" / "seed1" / "checkpoint.pt").exists()
    assert not (out / "summary.json").exists()

    monkeypatch.setattr(loop.Trainer, "train_epoch", real_epoch)
    real_train, calls = compare.train, []

    def counting_train(config, *, resume=False, **options):
        calls.append((config.method, config.seed, resume))
        return real_train(config, resume=resume, **options)

    monkeypatch.setattr(compare, "train", counting_train)
    code, _, stderr = run_cli(compare_args(out), capsys)
    assert code == 0
    assert calls == [("set", 1, True)]  # only the interrupted run trains, from its checkpoint
    assert [path.stat().st_mtime_ns for path in finished_runs] == stamps
    assert stderr.count("reused") == 3 and stderr.count("resumed") == 1
    resumed = json.loads((out / "set" / "seed1" / "result.json").read_text())
    uninterrupted = run_results(finished)[("set", 1)]
    assert [e["test_acc"] for e in resumed["epochs"]] == [e["test_acc"] for e in uninterrupted["epochs"]]
    assert json.loads((out / "summary.json").read_text())["methods"]["set"]["runs"] == ["set/seed0", "set/seed1"]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--epochs", "3"], "epochs=2"),
        (["--param", "zeta=0.5"], "params="),
        (["--lr", "0.01"], "lr=0.05"),
    ],
)
def test_changed_settings_are_refused_before_any_training(finished, extra, message, capsys, monkeypatch):
    stamp = (finished / "summary.json").stat().st_mtime_ns
    monkeypatch.setattr(compare, "train", lambda *a, **k: pytest.fail("nothing may train"))
    code, _, stderr = run_cli(compare_args(finished, *extra), capsys)
    assert code == 2 and stderr.count("\n") == 1
    assert message in stderr and "choose another --out" in stderr
    assert (finished / "summary.json").stat().st_mtime_ns == stamp


def test_a_moved_comparison_still_reuses_its_finished_runs_and_adds_new_methods(finished, tmp_path, monkeypatch):
    moved = tmp_path / "moved"
    shutil.copytree(finished, moved)
    real_train, calls = compare.train, []

    def counting_train(config, **options):
        calls.append(config.method)
        return real_train(config, **options)

    monkeypatch.setattr(compare, "train", counting_train)
    args = compare_args(moved, "--seeds", "1")
    args[args.index("--methods") + 1] = "static,dense"
    assert main(args) == 0
    assert calls == ["dense"]
    summary = json.loads((moved / "summary.json").read_text())
    assert list(summary["methods"]) == ["static", "dense"] and summary["seeds"] == [0]


@pytest.mark.parametrize(
    "methods, extra, message",
    [
        ("static,nope", [], "unknown method 'nope'"),
        ("", [], "at least one method"),
        ("static,,set", [], "empty name"),
        ("set,set", [], "more than once"),
        ("static,set", ["--seeds", "0"], "--seeds must be at least 1"),
        ("static,dense", ["--param", "zeta=0.2"], "has a parameter 'zeta'"),
        ("static", ["--param", "set.zeta=0.2"], "not among --methods"),
        ("set", ["--param", "set.nope=1"], "no parameter 'nope'"),
        ("set", ["--param", "zeta=lots"], "zeta expects float"),
        ("set", ["--target-acc", "1.5"], "--target-acc"),
        ("set", ["--epochs", "0"], "epochs must be at least 1"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(methods, extra, message, tmp_path, capsys):
    out = tmp_path / "out"
    args = compare_args(out, *extra)
    args[args.index("--methods") + 1] = methods
    if "--seeds" in extra:
        del args[args.index("--seeds") : args.index("--seeds") + 2]
    code, _, stderr = run_cli(args, capsys)
    assert code == 2
    assert stderr.startswith("evosparse: error:") and stderr.count("\n") == 1
    assert message in stderr
    assert not out.exists()


def test_missing_methods_or_out_exit_2(tmp_path, capsys):
    code, _, stderr = run_cli(["compare", "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "--methods" in stderr and stderr.count("\n") == 1
    code, _, stderr = run_cli(["compare", "--methods", "set"], capsys)
    assert code == 2 and "needs --out" in stderr and stderr.count("\n") == 1


def test_param_goes_to_every_method_declaring_it_and_method_prefix_wins():
    shared = distribute_params(["static", "set"], {"zeta": "0.2"})
    assert shared == {"static": {}, "set": {"zeta": "0.2"}}
    targeted = distribute_params(["set", "static"], {"set.zeta": "0.5", "zeta": "0.2"})
    assert targeted["set"] == {"zeta": "0.5"}
    with pytest.raises(UsageError, match="no method among static, dense"):
        distribute_params(["static", "dense"], {"zeta": "0.2"})
    every = distribute_params(["static", "set"], {"defaults": "paper", "static.defaults": "evosparse"})
    assert every == {"static": {"defaults": "evosparse"}, "set": {"defaults": "paper"}}


def test_toml_file_seeds_and_params_map_onto_every_run(tmp_path):
    config_file = tmp_path / "setup.toml"
    config_file.write_text(
        'method = "rigl"\nepochs = 4\nhidden = [16, 8]\nseed = 5\n'
        '[params]\nzeta = 0.4\n[params.set]\ngrow_init = "zero"\n'
    )
    comparison = plan_comparison(
        "static,set", seed_count=2, config_file=config_file, overrides={"out": str(tmp_path / "o"), "lr": 0.01}
    )
    configs = comparison.configs()
    assert comparison.seeds == (5, 6) and list(configs) == [("static", 5), ("static", 6), ("set", 5), ("set", 6)]
    assert configs[("set", 6)].out == str(tmp_path / "o" / "set" / "seed6")
    assert all(c.epochs == 4 and c.hidden == [16, 8] and c.lr == 0.01 for c in configs.values())
    assert configs[("set", 5)].params["zeta"] == 0.4 and configs[("set", 5)].params["grow_init"] == "zero"
    assert configs[("static", 5)].params == {}
    assert not (tmp_path / "o").exists()  # planning trains nothing


def test_a_single_seed_has_zero_spread():
    assert compare.spread([0.9]) == {"mean": 0.9, "std": 0.0, "values": [0.9]}


@given(st.lists(st.floats(0.0, 1.0), max_size=12), st.floats(0.0, 1.0))
def test_epoch_reaching_is_the_first_epoch_at_or_above_target(accuracies, target):
    epoch = epoch_reaching(accuracies, target)
    if epoch is None:
        assert all(a < target for a in accuracies)
    else:
        assert accuracies[epoch - 1] >= target and all(a < target for a in accuracies[: epoch - 1])


def test_result_without_checkpoint_is_refused(tmp_path):
    comparison = plan_comparison("static", seed_count=1, overrides={"out": str(tmp_path), "epochs": 1})
    folder = comparison.run_folder("static", 0)
    folder.mkdir(parents=True)
    (folder / "result.json").write_text("{}")
    with pytest.raises(UsageError, match="cannot be checked"):
        compare.run_comparison(comparison, progress=False)


def test_summary_tests_each_method_against_the_first_listed_on_the_selected_test_accuracy(finished):
    summary = json.loads((finished / "summary.json").read_text())
    section, results = summary["statistics"], run_results(finished)
    values = {m: [results[(m, s)]["test_acc_at_selected"] for s in SEEDS] for m in METHODS}
    assert section["on"] == "test_acc_at_selected"
    baseline = METHODS[0]
    assert section == {"on": "test_acc_at_selected", **json.loads(json.dumps(compare_to_baseline(values, baseline)))}
    text = (finished / "summary.md").read_text()
    assert "### Differences beyond seed noise" in text and f"against the baseline, {baseline}." in text
    other = next(m for m in METHODS if m != baseline)
    row = next(line for line in text.splitlines() if line.startswith(f"| {other} | ") and "[" in line)
    entry = section["methods"][other]
    low, high = entry["ci95"]
    assert f"{entry['mean']:.4f} [{low:.4f}, {high:.4f}] | {entry['p']:.3g} |" in row
    higher = entry["mean"] > section["methods"][baseline]["mean"]
    reading = "not distinguishable from" if entry["p"] >= 0.05 else ("higher than" if higher else "lower than")
    assert row.endswith(f"{reading} {baseline} |")


def test_summary_reports_costs_relative_to_dense_and_a_load_free_step_time(finished):
    summary = json.loads((finished / "summary.json").read_text())
    results = run_results(finished)
    for method in METHODS:
        entry = summary["methods"][method]
        runs = [results[(method, seed)] for seed in SEEDS]
        # static and SET record no dense gradient, and each weight of an MLP is used once per sample
        assert entry["training_macs_relative"]["values"] == pytest.approx([r["density_final"] for r in runs])
        assert entry["inference_macs_relative"]["values"] == [r["inference_macs"]["relative"] for r in runs]
        assert all(ratio > 0 for ratio in entry["step_time_ratio"]["values"])
    header = next(line for line in (finished / "summary.md").read_text().splitlines() if line.startswith("| method |"))
    assert "train FLOPs ×dense" in header and "step time ×dense step" in header


def test_an_unknown_baseline_is_refused_in_one_line(tmp_path, capsys):
    assert main([*compare_args(tmp_path / "out"), "--baseline", "rigl"]) == 2
    assert "--baseline rigl is not among the compared methods (static, set)" in capsys.readouterr().err
