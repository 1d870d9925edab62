"""The character transformer: causal, every projection a sparse layer of its own (embeddings and norms
dense), trains from the command line under a dynamic sparse method, refused by path-based methods."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

import evosparse
from evosparse.cli import main
from evosparse.errors import UsageError
from evosparse.methods import METHODS
from evosparse.models.gpt import CharGPT


def test_a_position_sees_only_itself_and_the_past():
    torch.manual_seed(0)
    model = CharGPT(vocabulary=11, context=16, width=64, layers=2).eval()
    codes = torch.randint(0, 11, (3, 16))
    changed = codes.clone()
    changed[:, 9:] = (changed[:, 9:] + 1) % 11
    with torch.no_grad():
        before, after = model(codes), model(changed)
    assert before.shape == (3, 16, 11)
    torch.testing.assert_close(before[:, :9], after[:, :9])
    assert not torch.allclose(before[:, 9:], after[:, 9:])


def test_every_projection_is_its_own_sparse_layer_and_embeddings_and_norms_stay_dense():
    model = CharGPT(vocabulary=11, context=16, width=64, layers=3)
    s = evosparse.sparsify(model, torch.optim.SGD(model.parameters(), lr=0.1), "set", density=0.2)
    names = [layer.name for layer in s.topology.layers]
    per_block = ["attention.query", "attention.key", "attention.value", "attention.output", "expand", "contract"]
    assert names == [f"blocks.{b}.{p}.weight" for b in range(3) for p in per_block] + ["head.weight"]
    assert s.density() == pytest.approx(0.2, abs=1e-3)
    assert model.blocks[0].attention.heads == 2  # one head per 32 channels
    dense = [n for n, p in model.named_parameters() if n.endswith("weight") and f"{n}" not in names]
    assert dense == ["token.weight", "position.weight"] + [
        f"blocks.{b}.{norm}.weight" for b in range(3) for norm in ("attention_norm", "mlp_norm")
    ] + ["norm.weight"]


def test_path_based_methods_refuse_it_in_one_line_though_its_shapes_chain():
    model = CharGPT(vocabulary=11, context=16, width=32, layers=1)
    with pytest.raises(UsageError, match="CharGPT's sparse layers are not one"):
        evosparse.sparsify(model, torch.optim.SGD(model.parameters(), lr=0.1), "path_weight", density=0.3)


@pytest.fixture(scope="module")
def text_file(tmp_path_factory) -> str:
    generator = torch.Generator().manual_seed(0)
    words = ["sparse", "networks", "grow", "prune", "connections", "train", "the", "and", "weights", "evolve"]
    picks = torch.randint(0, len(words), (2400,), generator=generator)
    path = tmp_path_factory.mktemp("text") / "corpus.txt"
    path.write_text(" ".join(words[i] for i in picks) + "\n")
    return str(path)


def test_rigl_trains_it_from_the_command_line_at_density_0_1(tmp_path, text_file, capsys):
    out = tmp_path / "run"
    args = ["train", "--model", "gpt", "--dataset", f"text:{text_file}", "--method", "rigl", "--density", "0.1"]
    args += ["--hidden", "64,64", "--epochs", "3", "--lr", "0.003", "--optimizer", "adam", "--batch-size", "16"]
    assert main([*args, "--out", str(out), "--no-progress", "--param", "update_interval=10"]) == 0
    result = json.loads((out / "result.json").read_text())
    losses = [epoch["train_loss"] for epoch in result["epochs"]]
    chance = math.log(20)  # 20 distinct characters: the loss of a uniform guess
    assert losses[-1] < losses[0] and losses[-1] < 0.8 * chance, losses  # it learns the words' spelling
    assert result["density_final"] == pytest.approx(0.1, abs=1e-3)
    assert sum(e["connections_changed"] for e in result["epochs"]) > 0
    assert len(result["layers"]) == 13 and result["architecture"][1:3] == [64, 64]


@pytest.mark.parametrize("method", sorted(set(METHODS) - {"path_weight"}))
def test_every_method_not_bound_to_chains_runs_on_it_with_exact_budgets_and_masks(method):
    torch.manual_seed(0)
    model = CharGPT(vocabulary=11, context=16, width=32, layers=1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    steps = {"update_unit": "step", "update_interval": 2} if method in ("gmp", "prune", "rigl", "srigl") else {}
    s = evosparse.sparsify(model, optimizer, method, density=0.3, total_steps=12, **steps)
    generator = torch.Generator().manual_seed(0)
    for _ in range(2):
        for _ in range(6):
            codes = torch.randint(0, 11, (4, 16), generator=generator)
            loss = nn.functional.cross_entropy(model(codes).reshape(-1, 11), codes.roll(-1, 1).reshape(-1))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            s.step()
        s.end_epoch()
    if s.method.fixed_budget:
        assert [layer.active for layer in s.topology.layers] == list(s.plan.budgets)
    for layer in s.topology.layers:
        assert not layer.weight.detach()[~layer.mask].any(), layer.name


def test_block_and_head_densities_count_the_masks_brute_force():
    from evosparse.topology.groups import group_densities

    torch.manual_seed(0)
    model = CharGPT(vocabulary=11, context=16, width=64, layers=2)
    s = evosparse.sparsify(model, torch.optim.SGD(model.parameters(), lr=0.1), "set", density=0.2)
    layers = {layer.name: layer for layer in s.topology.layers}
    masks = {name: layer.mask for name, layer in layers.items()}
    report = {g["name"]: g for g in group_densities(model.density_groups(), layers)}
    assert list(report) == [
        "blocks.0",
        "blocks.0.head0",
        "blocks.0.head1",
        "blocks.1",
        "blocks.1.head0",
        "blocks.1.head1",
    ]
    block = [m for name, m in masks.items() if name.startswith("blocks.1.")]
    assert report["blocks.1"]["active"] == sum(int(m.sum()) for m in block)
    assert report["blocks.1"]["total"] == sum(m.numel() for m in block)
    a = "blocks.0.attention"
    rows = [masks[f"{a}.{n}.weight"][32:64] for n in ("query", "key", "value")]  # head 1 of 2: rows 32..63
    columns = masks[f"{a}.output.weight"][:, 32:64]
    assert report["blocks.0.head1"]["active"] == sum(int(r.sum()) for r in rows) + int(columns.sum())
    assert report["blocks.0.head1"]["total"] == 4 * 32 * 64


def test_a_gpt_run_reports_its_blocks_and_heads(tmp_path, text_file, capsys):
    out = tmp_path / "run"
    args = ["train", "--model", "gpt", "--dataset", f"text:{text_file}", "--hidden", "64", "--epochs", "1"]
    assert main([*args, "--out", str(out), "--no-progress", "--optimizer", "adam", "--lr", "0.003"]) == 0
    groups = json.loads((out / "result.json").read_text())["layer_groups"]
    assert [g["name"] for g in groups] == ["blocks.0", "blocks.0.head0", "blocks.0.head1"]
    assert "groups: blocks.0 0." in capsys.readouterr().err
