"""`compare --train-fractions`: a column per fraction, runs at fraction 1 in compare's plain layout (so an
existing comparison is reused), every run reused on a rerun, and the matched-training-loss section."""

from __future__ import annotations

import contextlib
import io
import json
import statistics
from pathlib import Path

import pytest

from evosparse.analysis.generalisation import generalisation_summary
from evosparse.cli import main
from evosparse.engine import loop
from evosparse.engine.checkpoint import load_checkpoint
from evosparse.engine.fractions import fraction_folder, parse_fractions, plot_file
from evosparse.errors import UsageError

METHODS = ("static", "set")
SEEDS = (0, 1)
FRACTIONS = (1.0, 0.5)


def compare_args(out: Path, *extra: str, methods: tuple[str, ...] = METHODS, seeds: int = len(SEEDS)) -> list[str]:
    """``methods`` × ``seeds`` on digits, 2 epochs, a 64-8-10 MLP at density 0.5."""
    return [
        "compare",
        "--methods",
        ",".join(methods),
        "--seeds",
        str(seeds),
        "--epochs",
        "2",
        "--hidden",
        "8",
        "--density",
        "0.5",
        "--target-acc",
        "0.999",
        "--out",
        str(out),
        "--no-progress",
        *extra,
    ]


@pytest.fixture(autouse=True)
def _no_per_run_plots(monkeypatch):
    """Each run's own curves.png is `train`'s business; skipping it keeps these tests fast."""
    monkeypatch.setattr(loop, "plot_run_curves", lambda *args, **kwargs: None)


def run_folder(out: Path, method: str, seed: int, fraction: float) -> Path:
    return out / method / fraction_folder(fraction) / f"seed{seed}"


def main_with_stderr(args: list[str]) -> str:
    """Run the CLI, asserting success; return what it wrote to stderr (one line per run)."""
    stream = io.StringIO()
    with contextlib.redirect_stderr(stream):
        assert main(args) == 0
    return stream.getvalue()


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[Path, str, str]:
    """A plain comparison, then the same with fractions 1.0,0.5 in its folder, then that again;
    returns (out, stderr of the fractions run, stderr of its rerun)."""
    out = tmp_path_factory.mktemp("fractions") / "out"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(loop, "plot_run_curves", lambda *args, **kwargs: None)
        main_with_stderr(compare_args(out))
        first = main_with_stderr(compare_args(out, "--train-fractions", "1.0,0.5"))
        again = main_with_stderr(compare_args(out, "--train-fractions", "1.0,0.5"))
    return out, first, again


def results(out: Path) -> dict[tuple[str, int, float], dict]:
    return {
        (m, s, f): json.loads((run_folder(out, m, s, f) / "result.json").read_text())
        for m in METHODS
        for s in SEEDS
        for f in FRACTIONS
    }


def test_fraction_one_reuses_the_plain_layout_and_other_fractions_train(finished):
    out, first, again = finished
    assert first.count("reused") == 4 and first.count("trained") == 4
    assert "set f0.5 seed 1: trained" in first and "set seed 1: reused" in first
    assert again.count("reused") == 8 and "trained" not in again
    for (method, seed, fraction), result in results(out).items():
        saved = load_checkpoint(run_folder(out, method, seed, fraction) / "checkpoint.pt")["config"]
        assert saved["train_fraction"] == result["train_fraction"] == fraction
        assert (result["method"], result["seed"]) == (method, seed)


def test_every_method_of_a_seed_trains_on_as_many_samples(finished):
    out, _, _ = finished
    samples = {key: result["train_samples"] for key, result in results(out).items()}
    for seed in SEEDS:
        assert samples[("static", seed, 0.5)] == samples[("set", seed, 0.5)] == 606
        assert samples[("static", seed, 1.0)] == 1212  # digits' 1,347 less the 135 held out for validation


def test_summary_has_each_fraction_recomputed_from_its_runs(finished):
    out, _, _ = finished
    summary = json.loads((out / "summary.json").read_text())
    runs = results(out)
    assert summary["train_fractions"] == list(FRACTIONS) and list(summary["fractions"]) == ["1.0", "0.5"]
    assert "train_fraction" not in summary["setup"] and summary["seeds"] == list(SEEDS)
    for fraction in FRACTIONS:
        entry = summary["fractions"][str(fraction)]
        assert entry["train_samples"] == runs[("set", 0, fraction)]["train_samples"]
        for method in METHODS:
            finals = [runs[(method, seed, fraction)]["final_test_acc"] for seed in SEEDS]
            assert entry["methods"][method]["final_acc"]["mean"] == pytest.approx(statistics.fmean(finals))
            assert entry["methods"][method]["runs"] == [
                run_folder(Path(), method, seed, fraction).as_posix() for seed in SEEDS
            ]
        expected = generalisation_summary({m: [runs[(m, s, fraction)] for s in SEEDS] for m in METHODS})
        assert entry["generalisation"] == json.loads(json.dumps(expected))


def test_table_has_a_column_per_fraction_and_says_never(finished):
    out, _, _ = finished
    text = (out / "summary.md").read_text()
    summary = json.loads((out / "summary.json").read_text())
    table = [line for line in text.split("\n\n")[3].splitlines()]
    header = [cell.strip() for cell in table[0].strip("|").split("|")]
    assert header == [
        "method",
        "final acc 100%",
        "final acc 50%",
        "epoch to 0.999 (100%)",
        "epoch to 0.999 (50%)",
    ]
    for method, line in zip(METHODS, table[2:]):
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        finals = [summary["fractions"][str(f)]["methods"][method]["final_acc"] for f in FRACTIONS]
        assert cells[0] == method and cells[1:3] == [f"{s['mean']:.4f} ± {s['std']:.4f}" for s in finals]
        assert cells[3:] == ["never (0/2)", "never (0/2)"]
    assert "## 50% of the training set (606 samples)" in text and "### Test accuracy at matched training loss" in text
    for fraction in FRACTIONS:
        for stem in ("curves", "generalisation"):
            assert f"({plot_file(stem, fraction)})" in text
            assert (out / plot_file(stem, fraction)).read_bytes().startswith(b"\x89PNG")


def test_a_plain_comparison_reports_accuracy_at_matched_training_loss(tmp_path):
    out = tmp_path / "out"
    main_with_stderr(compare_args(out, methods=("set",), seeds=1))
    summary = json.loads((out / "summary.json").read_text())
    result = json.loads((out / "set" / "seed0" / "result.json").read_text())
    assert summary["generalisation"] == json.loads(json.dumps(generalisation_summary({"set": [result]})))
    assert "## Test accuracy at matched training loss" in (out / "summary.md").read_text()
    assert (out / "generalisation.png").read_bytes().startswith(b"\x89PNG")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--train-fractions", "1.0,0"], "train fraction must be in (0, 1], got 0.0"),
        (["--train-fractions", "0.5,x"], "--train-fractions expects numbers"),
        (["--train-fractions", "0.5,0.50"], "lists 0.5 more than once"),
        (["--train-fractions", "1,0.5", "--train-fraction", "0.5"], "either --train-fraction or --train-fractions"),
        (["--train-fraction", "1.5"], "train fraction must be in (0, 1]"),
    ],
)
def test_bad_fractions_exit_2_before_training(tmp_path, capsys, extra, message):
    out = tmp_path / "out"
    assert main(compare_args(out, *extra)) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not out.exists()


def test_parse_fractions_keeps_the_order():
    assert parse_fractions("1.0, 0.6,0.4") == (1.0, 0.6, 0.4)
    with pytest.raises(UsageError):
        parse_fractions("")
