import csv

import pytest
import torch

from evosparse.analysis.graph import graph_metrics, matrix_graph_metrics
from evosparse.analysis.report import analyze_run, epoch_metrics, recurrent_matrices
from evosparse.analysis.snapshots import list_snapshots, load_snapshot, save_snapshot
from evosparse.engine.config import build_config
from evosparse.engine.loop import train
from evosparse.errors import UsageError
from evosparse.sparsifier import sparsify


def test_snapshots_store_exactly_the_masks(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(30, 20), torch.nn.ReLU(), torch.nn.Linear(20, 4))
    s = sparsify(model, None, "static", density=0.2)
    save_snapshot(tmp_path, 3, s.topology)
    [(epoch, path)] = list_snapshots(tmp_path)
    masks = load_snapshot(path)
    assert epoch == 3 and list(masks) == ["0.weight", "2.weight"]
    assert all(torch.equal(masks[layer.name], layer.mask) for layer in s.topology.layers)
    assert path.stat().st_size < 4 * s.topology.active + 1024  # indices, not dense masks


def test_a_damaged_snapshot_is_refused_in_one_line(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(8, 4))
    save_snapshot(tmp_path, 1, sparsify(model, None, "static", density=0.5).topology)
    [(_, path)] = list_snapshots(tmp_path)
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(UsageError, match="unreadable"):
        load_snapshot(path)


def test_analyze_writes_metrics_that_equal_graph_metrics_of_each_snapshot(tmp_path):
    out = tmp_path / "run"
    train(build_config(None, {"epochs": 3, "hidden": "24,12", "out": str(out)}, []), progress=False)
    rows = analyze_run(out)
    assert [r["epoch"] for r in rows] == [1, 2, 3] and {r["scope"] for r in rows} == {"network"}
    for row, (_, path) in zip(rows, list_snapshots(out)):
        expected = graph_metrics(list(load_snapshot(path).values()))
        assert row["algebraic_connectivity"] == pytest.approx(expected["algebraic_connectivity"])
        assert row["degree_gini"] == pytest.approx(expected["degree_gini"])
    written = list(csv.DictReader((out / "analysis" / "graph_metrics.csv").open()))
    assert len(written) == 3 and float(written[0]["edges"]) == rows[0]["edges"]
    for name in ("graph_metrics.png", "degrees.png"):
        assert (out / "analysis" / name).read_bytes()[:4] == b"\x89PNG"


def test_analyze_without_snapshots_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="no topology snapshots"):
        analyze_run(tmp_path)


def test_recurrent_weights_are_split_per_gate_and_analysed_as_square_graphs():
    generator = torch.Generator().manual_seed(0)
    hidden = 6
    masks = {
        "rnn.weight_ih_l0": torch.rand(4 * hidden, 5, generator=generator) < 0.5,
        "rnn.weight_hh_l0": torch.rand(4 * hidden, hidden, generator=generator) < 0.5,
    }
    blocks = recurrent_matrices(masks)
    assert list(blocks) == [f"rnn.weight_hh_l0[gate{g}]" for g in range(4)]
    rows = epoch_metrics(1, masks)
    assert [row["scope"] for row in rows] == list(blocks)  # the LSTM's masks form no layered chain
    expected = matrix_graph_metrics(blocks["rnn.weight_hh_l0[gate2]"], square_as_recurrent=True)
    assert rows[2]["clustering"] == pytest.approx(expected["clustering"])


def test_analyze_command_prints_one_summary_line(tmp_path, capsys):
    from evosparse.cli import main

    out = tmp_path / "run"
    assert main(["train", "--epochs", "2", "--hidden", "16", "--out", str(out), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["analyze", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert stdout.startswith("2 snapshots analysed") and stdout.count("\n") == 1
    assert main(["analyze", str(tmp_path / "nothing")]) == 2
