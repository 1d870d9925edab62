"""Wide and small dense baselines: hidden widths scaled to the closest reachable weight count (AWS 4.3)."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from evosparse.engine import loop
from evosparse.engine.compare import plan_comparison, run_comparison
from evosparse.engine.config import build_config
from evosparse.engine.width_scaling import closest_scaling, parse_width_scale, scaled_widths, sparse_weight_shapes
from evosparse.errors import UsageError
from evosparse.models import ModelSpec
from evosparse.topology.distributions import layer_budgets

DIGITS = ModelSpec((64,), 10)
BASE = (16, 8)


@pytest.fixture(autouse=True)
def _no_plots(monkeypatch):
    monkeypatch.setattr(loop, "plot_run_curves", lambda *args, **kwargs: None)


def mlp_weights(widths, sizes=(64, 10)) -> int:
    """Weights of an MLP input-widths-output, by hand."""
    chain = [sizes[0], *widths, sizes[1]]
    return sum(a * b for a, b in zip(chain[:-1], chain[1:]))


def vae_weights(widths, pixels=64) -> int:
    """Weights of a VAE pixels-h-(μ, log σ² of l) and l-h-pixels, by hand."""
    hidden, latent = widths
    return pixels * hidden + hidden * 2 * latent + latent * hidden + hidden * pixels


def model_weights(model: str, widths, spec: ModelSpec = DIGITS) -> int:
    shapes = sparse_weight_shapes(model, ModelSpec(spec.input_shape, spec.num_classes, hidden=tuple(widths)), "all")
    return sum(shape.numel() for shape in shapes)


def reachable(base, largest_factor: float) -> set[tuple[int, ...]]:
    """Brute force: every width tuple one common factor up to ``largest_factor`` gives (sampled between
    all the breakpoints (k + ½)/h where a width changes)."""
    points = sorted({(k + 0.5) / h for h in base for k in range(1, math.ceil(largest_factor * h) + 1)})
    samples = [points[0] / 2, *((a + b) / 2 for a, b in zip(points, points[1:])), points[-1] * 1.01]
    return {scaled_widths(base, factor) for factor in samples}


def brute_force_distance(count, base, target: int, largest_factor: float = 12.0) -> int:
    return min(abs(count(widths) - target) for widths in reachable(base, largest_factor))


def test_the_model_built_on_meta_counts_its_weights_as_the_hand_formula():
    for widths in [(1, 1), (16, 8), (45, 22)]:
        assert model_weights("mlp", widths) == mlp_weights(widths)
    for widths in [(32, 4), (1, 1), (70, 9)]:
        assert model_weights("vae", widths) == vae_weights(widths)


@settings(max_examples=60, deadline=None)
@given(target=st.integers(min_value=1, max_value=mlp_weights((190, 95))))
def test_the_factor_found_gives_the_closest_count_brute_force_reaches(target):
    factor, widths = closest_scaling(mlp_weights, BASE, target)
    assert widths == scaled_widths(BASE, factor)
    assert abs(mlp_weights(widths) - target) == brute_force_distance(mlp_weights, BASE, target)


def test_a_vae_scales_its_hidden_widths_and_keeps_its_latent_size(tmp_path):
    overrides = {"model": "vae", "hidden": "32,16,4", "optimizer": "rmsprop", "lr": 0.001, "density": 0.3}
    result = loop.train(build(method="dense", width_scale="auto-small", out=str(tmp_path), **overrides), progress=False)
    record = result["width_scaling"]
    assert record["base_hidden"] == [32, 16, 4] and record["hidden"][-1] == 4
    target = round(0.3 * model_weights("vae", (32, 16, 4)))
    assert record["params_target"] == target and record["params"] == model_weights("vae", record["hidden"])

    def count(widths):
        return model_weights("vae", (*widths, 4))

    assert abs(record["params"] - target) == brute_force_distance(count, (32, 16), target, largest_factor=1.0)


def test_widths_round_half_up_and_never_reach_zero():
    assert scaled_widths((16, 8, 3), 1.5) == (24, 12, 5)
    assert scaled_widths((16, 8), 0.01) == (1, 1)
    assert scaled_widths((3,), 0.5) == (2,)  # 1.5 rounds up


def build(**overrides):
    return build_config(None, {"hidden": "16,8", "epochs": 1, "batch_size": 64, **overrides})


@pytest.mark.parametrize("budget", [{"density": 0.3}, {"density": 0.05}, {"epsilon": 2.0}])
def test_wide_and_small_dense_runs_match_their_targets(tmp_path, budget):
    dense_weights = mlp_weights(BASE)
    shapes = [(16, 64), (8, 16), (10, 8)]
    active = sum(layer_budgets(shapes, distribution="erdos_renyi", **budget))
    density = budget.get("density", active / dense_weights)
    targets = {"auto-wide": round(dense_weights / density), "auto-small": active}
    for mode, target in targets.items():
        result = loop.train(build(method="dense", width_scale=mode, out=str(tmp_path / mode), **budget), progress=False)
        record = result["width_scaling"]
        assert record["mode"] == mode and record["params_target"] == target and record["base_hidden"] == [16, 8]
        assert result["architecture"] == [64, *record["hidden"], 10]
        assert result["params_dense"] == result["params_active"] == record["params"] == mlp_weights(record["hidden"])
        assert abs(record["params"] - target) == brute_force_distance(mlp_weights, BASE, target)
        assert result["density_target"] is None and result["method"] == "dense"


def test_a_plain_factor_scales_any_method_and_the_default_widths(tmp_path):
    result = loop.train(build(method="set", width_scale=2, hidden=None, density=0.1, out=str(tmp_path)), progress=False)
    assert result["architecture"] == [64, 600, 200, 10]
    assert result["width_scaling"]["mode"] == "factor" and result["width_scaling"]["params_target"] is None
    assert result["params_dense"] == mlp_weights((600, 200))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"method": "set", "width_scale": "auto-wide"}, "use it with --method dense"),
        ({"method": "dense", "width_scale": "wide"}, "auto-wide, auto-small or a positive number"),
        ({"method": "dense", "width_scale": "0"}, "auto-wide, auto-small or a positive number"),
        ({"method": "dense", "width_scale": "nan"}, "auto-wide, auto-small or a positive number"),
        ({"method": "dense", "width_scale": True}, "auto-wide, auto-small or a positive number"),
    ],
)
def test_bad_width_scales_are_refused_in_one_line(overrides, message):
    with pytest.raises(UsageError, match=message):
        build(**overrides)


def test_a_model_without_hidden_widths_is_refused(tmp_path):
    config = build(method="dense", width_scale="auto-wide", model="cnn", hidden=None, dataset="digits")
    with pytest.raises(UsageError, match="model cnn has no hidden widths to scale"):
        loop.Trainer(config, progress=False)


def test_a_toml_number_or_text_is_read_as_a_factor():
    assert parse_width_scale(1.5) == parse_width_scale("1.5") == "1.5"
    assert parse_width_scale(" auto-small ") == "auto-small"


def test_compare_reads_sparse_runs_against_wide_and_small_dense(tmp_path):
    settings = {"hidden": "16,8", "density": 0.3, "epochs": 1, "batch_size": 64, "out": str(tmp_path)}
    summary = run_comparison(
        plan_comparison(["wide-dense", "static", "small-dense"], seed_count=1, overrides=settings), progress=False
    )
    methods = summary["methods"]
    assert summary["architecture"] == [64, 16, 8, 10] and "width_scale" not in summary["setup"]
    static_active = methods["static"]["params_active"]["mean"]
    assert methods["small-dense"]["params_active"]["mean"] == pytest.approx(static_active, abs=10)
    assert methods["wide-dense"]["params_active"]["mean"] == pytest.approx(mlp_weights(BASE) / 0.3, abs=25)
    assert methods["wide-dense"]["architecture"] != methods["static"]["architecture"]
    result = json.loads((tmp_path / "small-dense" / "seed0" / "result.json").read_text())
    assert result["method"] == "dense" and result["width_scaling"]["mode"] == "auto-small"
