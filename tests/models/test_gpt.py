"""The character transformer: causal, every projection a sparse layer of its own (embeddings and norms
dense), trains from the command line under a dynamic sparse method, refused by path-based methods; its
head count (--heads) and window (--context), and the bits per character its text runs report."""

from __future__ import annotations

import io
import json
import math
import sys

import pytest
import torch
from torch import nn

import evosparse
from evosparse.cli import main
from evosparse.data.text import SEQ_LEN
from evosparse.engine.config import build_config
from evosparse.engine.loop import Trainer, train
from evosparse.errors import UsageError
from evosparse.methods import METHODS
from evosparse.models import ModelSpec, build_model
from evosparse.models.gpt import CharGPT, default_heads
from support import counts_steps


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


def test_sparse_embeddings_join_the_sparse_layers_with_their_own_values_kept():
    torch.manual_seed(0)
    model = CharGPT(vocabulary=11, context=16, width=32, layers=1, sparse_embeddings=True)
    token, position = model.token.weight.detach().clone(), model.position.weight.detach().clone()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    s = evosparse.sparsify(model, optimizer, "set", density=0.2, include=model.sparse_include)
    layers = {layer.name: layer for layer in s.topology.layers}
    assert list(layers)[:2] == ["token.weight", "position.weight"]
    assert s.density() == pytest.approx(0.2, abs=1e-3)
    for layer, before in ((layers["token.weight"], token), (layers["position.weight"], position)):
        assert 0 < layer.active < layer.numel
        assert torch.equal(layer.weight.detach()[layer.mask], before[layer.mask])  # GPT-2's N(0, 0.02²) kept
        assert not layer.weight.detach()[~layer.mask].any()
    with pytest.raises(UsageError, match="--sparse-embeddings sparsifies the embeddings of --model gpt"):
        build_model("mlp", ModelSpec((8,), 3, sparse_embeddings=True))


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
    args += ["--sparse-embeddings"]
    assert main([*args, "--out", str(out), "--no-progress", "--param", "update_interval=10"]) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["sparse_embeddings"] is True
    losses = [epoch["train_loss"] for epoch in result["epochs"]]
    chance = math.log(20)  # 20 distinct characters: the loss of a uniform guess
    assert losses[-1] < losses[0] and losses[-1] < 0.8 * chance, losses  # it learns the words' spelling
    assert result["density_final"] == pytest.approx(0.1, abs=1e-3)
    assert sum(e["connections_changed"] for e in result["epochs"]) > 0
    assert len(result["layers"]) == 15 and result["architecture"][1:3] == [64, 64]
    assert [layer["name"] for layer in result["layers"][:2]] == ["token.weight", "position.weight"]


@pytest.mark.parametrize("method", sorted(set(METHODS) - {"path_weight"}))
def test_every_method_not_bound_to_chains_runs_on_it_with_exact_budgets_and_masks(method):
    torch.manual_seed(0)
    model = CharGPT(vocabulary=11, context=16, width=32, layers=1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    acts_on_steps = counts_steps(method) or method == "prune"  # prune counts epochs unless told steps
    steps = {"update_unit": "step", "update_interval": 2} if acts_on_steps else {}
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


def brute_force_attention(attention: nn.Module, x: torch.Tensor, heads: int) -> torch.Tensor:
    """Causal multi-head attention written out head by head and position by position."""
    batch, time, width = x.shape
    size = width // heads
    q, k, v = attention.query(x), attention.key(x), attention.value(x)
    out = torch.zeros(batch, time, width)
    for head in range(heads):
        part = slice(head * size, (head + 1) * size)
        for t in range(time):
            scores = q[:, t, part].unsqueeze(1) @ k[:, : t + 1, part].transpose(1, 2) / math.sqrt(size)
            out[:, t, part] = (scores.softmax(dim=-1) @ v[:, : t + 1, part]).squeeze(1)
    return attention.output(out)


def test_heads_split_the_attention_as_written_out_and_change_its_output():
    torch.manual_seed(0)
    one, two = CharGPT(11, 16, width=8, layers=1, heads=1), CharGPT(11, 16, width=8, layers=1, heads=2)
    two.load_state_dict(one.state_dict())  # the same weights: only the split into heads differs
    x = torch.randn(3, 6, 8)
    with torch.no_grad():
        for model, heads in ((one, 1), (two, 2)):
            attention = model.blocks[0].attention
            assert attention.heads == heads and model.heads == heads
            torch.testing.assert_close(attention(x), brute_force_attention(attention, x, heads))
        assert not torch.allclose(one.blocks[0].attention(x), two.blocks[0].attention(x))
    assert [g.name for g in CharGPT(11, 16, width=64, layers=1, heads=4).density_groups()] == [
        "blocks.0",
        *(f"blocks.0.head{h}" for h in range(4)),
    ]


@pytest.mark.parametrize("width, heads", [(32, 1), (64, 2), (128, 4), (96, 3), (100, 2), (70, 2), (97, 1), (8, 1)])
def test_the_default_is_one_head_per_32_channels_lowered_to_a_divisor_of_the_width(width, heads):
    assert default_heads(width) == heads
    assert CharGPT(11, 16, width=width, layers=1).blocks[0].attention.heads == heads


def test_heads_are_refused_in_one_line_for_other_models_below_1_and_not_dividing_the_width():
    with pytest.raises(UsageError, match="--heads sets the attention heads of --model gpt; model lstm has none"):
        build_config(None, {"model": "lstm", "heads": 2})
    with pytest.raises(UsageError, match="--heads must be at least 1, got 0"):
        build_config(None, {"model": "gpt", "heads": 0})
    with pytest.raises(UsageError, match="gpt: width 64 is not divisible into 3 heads"):
        build_model("gpt", ModelSpec((16,), 11, sequence=True, hidden=(64,), heads=3))


def test_heads_and_context_come_from_a_toml_file_and_must_be_integers(tmp_path):
    path = tmp_path / "gpt.toml"
    path.write_text('model = "gpt"\ndataset = "text:corpus.txt"\nheads = 4\ncontext = 24\n')
    config = build_config(path)
    assert (config.heads, config.context) == (4, 24)
    path.write_text('model = "gpt"\nheads = "4"\n')
    with pytest.raises(UsageError, match="heads has the wrong type"):
        build_config(path)


def test_context_sets_the_windows_and_the_gpts_position_table(tmp_path, text_file):
    values = {"model": "gpt", "dataset": f"text:{text_file}", "hidden": "32", "context": 24}
    trainer = Trainer(build_config(None, {**values, "out": str(tmp_path / "run")}), progress=False)
    assert trainer.data.x_train.shape[1:] == (24,) and trainer.data.y_train.shape[1:] == (24,)
    assert trainer.model.position.weight.shape == (24, 32)
    default = Trainer(build_config(None, {**values, "context": None, "out": str(tmp_path / "b")}), progress=False)
    assert default.model.position.weight.shape == (SEQ_LEN, 32)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, text_file) -> tuple[dict, str, list[str]]:
    """One epoch of a 4-head gpt on 24-character windows: (result.json, train's stdout, its arguments)."""
    out = tmp_path_factory.mktemp("tiny") / "run"
    args = ["train", "--model", "gpt", "--dataset", f"text:{text_file}", "--hidden", "64", "--heads", "4"]
    args += ["--context", "24", "--epochs", "1", "--optimizer", "adam", "--lr", "0.003", "--out", str(out)]
    with pytest.MonkeyPatch.context() as patch:
        stdout = io.StringIO()
        patch.setattr(sys, "stdout", stdout)
        assert main([*args, "--no-progress"]) == 0
    return json.loads((out / "result.json").read_text()), stdout.getvalue(), args


def test_a_text_run_reports_bits_per_character_and_records_heads_and_context(tiny_run):
    result, stdout, _ = tiny_run
    assert result["heads"] == 4 and result["context"] == 24
    for epoch in result["epochs"]:
        assert epoch["test_bits_per_char"] == pytest.approx(epoch["test_loss"] / math.log(2), rel=1e-12)
        assert epoch["val_bits_per_char"] == pytest.approx(epoch["val_loss"] / math.log(2), rel=1e-12)
    last = result["epochs"][-1]
    assert result["final_test_bits_per_char"] == last["test_bits_per_char"]
    selected = result["epochs"][result["selected_epoch"] - 1]
    assert result["test_bits_per_char_at_selected"] == selected["test_bits_per_char"]
    assert f", {last['test_bits_per_char']:.4f} bits per character" in stdout
    assert {"test_loss", "test_acc", "val_loss", "val_acc", "final_test_acc"} <= set(last) | set(result)


def test_resume_refuses_a_changed_head_count(tiny_run, capsys):
    *_, args = tiny_run
    changed = [*args[: args.index("--heads") + 1], "2", *args[args.index("--heads") + 2 :]]
    assert main([*changed, "--resume", "--no-progress"]) == 2
    assert "was made with heads=4, this run has 2" in capsys.readouterr().err


def test_a_run_on_other_data_has_no_bits_per_character(tmp_path):
    result = train(build_config(None, {"epochs": 1, "hidden": "16", "out": str(tmp_path / "digits")}), progress=False)
    assert result["final_test_bits_per_char"] is None and result["test_bits_per_char_at_selected"] is None
    assert result["heads"] is None and result["context"] is None and result["sparse_embeddings"] is False
    assert "test_bits_per_char" not in result["epochs"][0]


def test_compare_tabulates_bits_per_character_of_text_runs(tmp_path, text_file, capsys):
    out = tmp_path / "cmp"
    args = ["compare", "--methods", "dense,static", "--seeds", "1", "--model", "gpt", "--dataset", f"text:{text_file}"]
    args += ["--hidden", "32", "--context", "16", "--epochs", "1", "--optimizer", "adam", "--lr", "0.003"]
    assert main([*args, "--out", str(out), "--no-progress"]) == 0
    lines = (out / "summary.md").read_text().splitlines()
    header = next(line for line in lines if line.startswith("| method")).split(" | ")
    column = header.index("final test bits/char")
    assert header[column + 1] == "test bits/char at val-selected epoch"
    for method in ("dense", "static"):
        bits = json.loads((out / method / "seed0" / "result.json").read_text())["final_test_bits_per_char"]
        row = next(line for line in lines if line.startswith(f"| {method} |")).split(" | ")
        assert row[column] == f"{bits:.4f} ± 0.0000"
