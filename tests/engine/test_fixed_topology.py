"""`--fixed-topology-from` and compare's `learned-static`: a static run on another run's final masks (AWS 5.1)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from evosparse.analysis.snapshots import list_snapshots, load_snapshot
from evosparse.cli import main
from evosparse.engine import loop
from evosparse.engine.checkpoint import load_checkpoint
from evosparse.engine.compare import plan_comparison, run_comparison
from evosparse.engine.config import build_config
from evosparse.engine.export_run import export_run
from evosparse.errors import UsageError
from support import killed_then_resumed, saved_masks

#: digits, a 64-16-8-10 MLP at density 0.3: every run below takes well under a second.
SETUP = {"hidden": "16,8", "density": 0.3, "epochs": 2, "batch_size": 64, "lr": 0.1}


@pytest.fixture(autouse=True)
def _no_plots(monkeypatch):
    monkeypatch.setattr(loop, "plot_run_curves", lambda *args, **kwargs: None)


def config(out: Path, **overrides):
    return build_config(None, {**SETUP, "out": str(out), **overrides})


def final_masks(run: Path) -> dict[str, torch.Tensor]:
    return saved_masks(load_checkpoint(run / "checkpoint.pt")["sparsifier"]["topology"])


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """A finished SET run whose topology moved during training."""
    out = tmp_path_factory.mktemp("fixed") / "set"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(loop, "plot_run_curves", lambda *args, **kwargs: None)
        result = loop.train(config(out, method="set"), progress=False)
    assert sum(epoch["connections_changed"] for epoch in result["epochs"]) > 0
    return out


def assert_same_masks(masks: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert sorted(masks) == sorted(expected)
    for name, mask in expected.items():
        assert torch.equal(masks[name], mask), name


def test_the_run_holds_the_sources_final_masks_at_every_epoch(source, tmp_path):
    result = loop.train(config(tmp_path / "learned", fixed_topology_from=str(source), epochs=3), progress=False)
    expected = final_masks(source)
    snapshots = list_snapshots(tmp_path / "learned")
    assert [epoch for epoch, _ in snapshots] == [1, 2, 3]
    for _, path in snapshots:
        assert_same_masks(load_snapshot(path), expected)
    assert_same_masks(final_masks(tmp_path / "learned"), expected)
    assert result["method"] == "static" and result["fixed_topology_from"] == str(source)
    assert all(epoch["connections_changed"] == 0 for epoch in result["epochs"])
    assert result["params_active"] == sum(int(mask.sum()) for mask in expected.values())


def test_weights_start_fresh_from_the_runs_own_seed_on_the_source_masks(source, tmp_path):
    trainer = loop.Trainer(config(tmp_path / "a", fixed_topology_from=str(source), seed=5), progress=False)
    other_seed = loop.Trainer(config(tmp_path / "b", fixed_topology_from=str(source), seed=6), progress=False)
    plain_static = loop.Trainer(config(tmp_path / "c", method="static", seed=5), progress=False)
    trained = load_checkpoint(source / "checkpoint.pt")["model"]
    layers = [run.sparsifier.topology.layers for run in (trainer, other_seed, plain_static)]
    for layer, other, plain in zip(*layers):
        assert torch.equal(layer.mask, final_masks(source)[layer.name])
        assert torch.equal(layer.weight != 0, layer.mask)  # every active weight drawn, every other one zero
        assert layer.budget == layer.active
        assert not torch.equal(layer.weight, trained[layer.name])
        assert not torch.equal(layer.weight, other.weight)
        assert not torch.equal(layer.mask, plain.mask)  # the source's masks replaced static's random draw


def test_a_resumed_run_keeps_the_masks_and_equals_an_uninterrupted_one(source, tmp_path, monkeypatch):
    whole = loop.train(config(tmp_path / "whole", fixed_topology_from=str(source), epochs=3), progress=False)
    resumed = killed_then_resumed(
        lambda: config(tmp_path / "cut", fixed_topology_from=str(source), epochs=3), monkeypatch, kill_after_epoch=1
    )
    assert [e["test_acc"] for e in resumed["epochs"]] == [e["test_acc"] for e in whole["epochs"]]
    assert_same_masks(final_masks(tmp_path / "cut"), final_masks(source))


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"hidden": "16,9"}, "hidden=[16, 8]"),
        ({"density": 0.2}, "density=0.3"),
        ({"distribution": "uniform"}, "distribution='erdos_renyi'"),
        ({"model": "vae", "hidden": "16,8"}, "model='mlp'"),
    ],
)
def test_another_architecture_or_budget_is_refused_in_one_line_naming_it(source, tmp_path, change, named):
    with pytest.raises(UsageError) as error:
        loop.Trainer(config(tmp_path / "x", fixed_topology_from=str(source), **change), progress=False)
    message = str(error.value)
    assert named in message and "\n" not in message and str(source) in message


def test_masks_of_another_input_size_are_refused_naming_the_layer(source, tmp_path):
    csv = tmp_path / "data.csv"
    rows = [",".join(str((i * 7 + j) % 5) for j in range(10)) + f",{i % 2}" for i in range(40)]
    csv.write_text("\n".join(rows) + "\n")
    with pytest.raises(UsageError, match=r"layers\.0\.weight is \(16, 64\) there, \(16, 10\) here"):
        loop.Trainer(config(tmp_path / "x", dataset=f"csv:{csv}", fixed_topology_from=str(source)), progress=False)


def test_sources_without_a_final_sparse_topology_are_refused(source, tmp_path):
    dense = tmp_path / "dense"
    loop.train(config(dense, method="dense", epochs=1), progress=False)
    with pytest.raises(UsageError, match="method dense, which has no sparse topology"):
        loop.Trainer(config(tmp_path / "a", fixed_topology_from=str(dense)), progress=False)
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "checkpoint.pt").write_bytes((source / "checkpoint.pt").read_bytes())
    with pytest.raises(UsageError, match="holds no finished run"):
        loop.Trainer(config(tmp_path / "b", fixed_topology_from=str(unfinished)), progress=False)


def test_the_cli_defaults_to_static_and_refuses_other_methods_with_exit_2(source, tmp_path, capsys):
    args = ["train", "--hidden", "16,8", "--density", "0.3", "--epochs", "1", "--no-progress"]
    assert main([*args, "--fixed-topology-from", str(source), "--out", str(tmp_path / "ok")]) == 0
    assert json.loads((tmp_path / "ok" / "result.json").read_text())["method"] == "static"
    capsys.readouterr()
    code = main([*args, "--fixed-topology-from", str(source), "--method", "set", "--out", str(tmp_path / "no")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "not --method set" in err
    code = main([*args, "--fixed-topology-from", str(tmp_path / "missing"), "--out", str(tmp_path / "no2")])
    assert code == 2 and capsys.readouterr().err.count("\n") == 1


def test_compare_trains_learned_static_after_its_source_on_the_same_seeds_masks(tmp_path):
    out = tmp_path / "cmp"
    settings = {**SETUP, "out": str(out)}
    comparison = plan_comparison(["learned-static", "static", "set"], seed_count=2, overrides=settings)
    assert [method for method, _ in comparison.configs()] == ["static", "static", "set", "set", *["learned-static"] * 2]
    summary = run_comparison(comparison, progress=False)
    assert list(summary["methods"]) == ["learned-static", "static", "set"]
    assert "fixed_topology_from" not in summary["setup"]
    for seed in (0, 1):
        run = out / "learned-static" / f"seed{seed}"
        result = json.loads((run / "result.json").read_text())
        assert result["method"] == "static" and result["fixed_topology_from"] == str(out / "set" / f"seed{seed}")
        assert_same_masks(final_masks(run), final_masks(out / "set" / f"seed{seed}"))
    assert not torch.equal(*(final_masks(out / "set" / f"seed{s}")["layers.0.weight"] for s in (0, 1)))
    again = run_comparison(plan_comparison(["learned-static", "static", "set"], seed_count=2, overrides=settings))
    assert again["methods"]["learned-static"]["final_acc"] == summary["methods"]["learned-static"]["final_acc"]


def test_a_moved_comparison_reuses_and_exports_its_learned_static_runs(tmp_path):
    first, moved = tmp_path / "first", tmp_path / "moved"
    run_comparison(plan_comparison(["set", "learned-static"], overrides={**SETUP, "out": str(first)}))
    first.rename(moved)  # the source folder named in the learned-static run is gone
    again = run_comparison(plan_comparison(["set", "learned-static"], overrides={**SETUP, "out": str(moved)}))
    assert again["methods"]["learned-static"]["final_acc"]["values"]
    assert export_run(moved / "learned-static" / "seed0").path.exists()


@pytest.mark.parametrize(
    ("methods", "learned_from", "message"),
    [
        (["static", "learned-static"], None, "needs an evolving sparse method"),
        (["set", "learned-static"], "rigl", "must name a sparse method among --methods"),
        (["dense", "set", "learned-static"], "dense", "must name a sparse method among --methods"),
        (["set", "static"], "set", "not among --methods"),
    ],
)
def test_compare_refuses_a_learned_static_without_a_usable_source(tmp_path, methods, learned_from, message):
    with pytest.raises(UsageError, match=message):
        plan_comparison(methods, overrides={**SETUP, "out": str(tmp_path)}, learned_from=learned_from)


def test_learned_from_picks_the_source_explicitly(tmp_path):
    comparison = plan_comparison(
        ["set", "rigl", "learned-static"], overrides={**SETUP, "out": str(tmp_path)}, learned_from="rigl", seed_count=1
    )
    assert comparison.configs()[("learned-static", 0)].fixed_topology_from == str(tmp_path / "rigl" / "seed0")
    default = plan_comparison(["static", "set", "rigl", "learned-static"], overrides={**SETUP, "out": str(tmp_path)})
    assert default.configs()[("learned-static", 0)].fixed_topology_from == str(tmp_path / "set" / "seed0")
