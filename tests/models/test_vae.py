"""The VAE (AWS Table 1: MNIST 256-10-256, RMSProp) and its ELBO objective, trained sparse by the loop."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from evosparse.data.base import standardise
from evosparse.engine import loop
from evosparse.engine.compare import markdown_table, plan_comparison, run_comparison
from evosparse.engine.config import build_config
from evosparse.engine.objectives import Elbo, gaussian_kl, negative_elbo
from evosparse.errors import UsageError
from evosparse.metrics import ACCURACY, NEGATIVE_ELBO, result_metric
from evosparse.models import ModelSpec, build_model
from evosparse.models.vae import VAE
from evosparse.topology.masks import find_sparse_parameters

VAE_SETUP = {"model": "vae", "hidden": "32,4", "optimizer": "rmsprop", "lr": 0.002, "batch_size": 64, "density": 0.3}


@pytest.fixture(autouse=True)
def _no_plots(monkeypatch):
    monkeypatch.setattr(loop, "plot_run_curves", lambda *args, **kwargs: None)


def test_the_default_vae_is_the_aws_mnist_model_with_every_matrix_sparsifiable():
    model = build_model("vae", ModelSpec((1, 28, 28), 10))
    assert model.architecture == [784, 256, 10, 256, 784]
    shapes = [tuple(getattr(m, a).shape) for _, m, a in find_sparse_parameters(model)]
    assert shapes == [(256, 784), (20, 256), (256, 10), (784, 256)]
    logits, mu, logvar = model(torch.rand(3, 1, 28, 28))
    assert logits.shape == (3, 784) and mu.shape == logvar.shape == (3, 10)


def test_a_deeper_vae_mirrors_its_encoder():
    model = build_model("vae", ModelSpec((64,), 10, hidden=(48, 24, 6)))
    assert model.architecture == [64, 48, 24, 6, 24, 48, 64]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (ModelSpec((64,), 10, dropout=0.2), "no dropout"),
        (ModelSpec((5,), 40, sequence=True), "cannot model text"),
    ],
)
def test_unsupported_settings_are_refused_in_one_line(spec, message):
    with pytest.raises(UsageError, match=message):
        build_model("vae", spec)


def test_the_analytic_kl_equals_torch_distributions():
    generator = torch.Generator().manual_seed(1)
    mu, logvar = torch.randn(5, 3, generator=generator), torch.randn(5, 3, generator=generator)
    reference = kl_divergence(Normal(mu, (0.5 * logvar).exp()), Normal(0.0, 1.0)).sum(dim=1)
    assert torch.allclose(gaussian_kl(mu, logvar), reference, atol=1e-6)
    assert torch.equal(gaussian_kl(torch.zeros(2, 3), torch.zeros(2, 3)), torch.zeros(2))


def test_the_elbo_of_a_tiny_vae_equals_a_hand_computation():
    model = VAE(input_size=2, hidden=(), latent=1)
    with torch.no_grad():
        model.posterior.weight.copy_(torch.tensor([[1.0, -1.0], [0.5, 0.5]]))
        model.posterior.bias.copy_(torch.tensor([0.0, -1.0]))
        model.decoder[0].weight.copy_(torch.tensor([[2.0], [-1.0]]))
        model.decoder[0].bias.copy_(torch.tensor([0.5, 0.0]))
    x, epsilon = torch.tensor([[1.0, 0.25]]), torch.tensor([[0.3]])
    mu, logvar = 1.0 - 0.25, 0.5 * 1.25 - 1.0
    z = mu + math.exp(logvar / 2) * 0.3
    reconstruction = 0.0
    for pixel, logit in zip([1.0, 0.25], [2 * z + 0.5, -z]):
        p = 1 / (1 + math.exp(-logit))
        reconstruction -= pixel * math.log(p) + (1 - pixel) * math.log(1 - p)
    kl = 0.5 * (mu**2 + math.exp(logvar) - 1 - logvar)
    logits, mu_out, logvar_out = model(x, epsilon)
    assert negative_elbo(logits, x, mu_out, logvar_out).item() == pytest.approx(reconstruction + kl, rel=1e-6)


def test_standardised_pixels_are_mapped_back_to_their_intensities():
    raw = torch.rand(50, 64)
    raw[0, 0], raw[1, 1] = 0.0, 1.0
    test = torch.rand(10, 64)
    _, (train, standard_test) = standardise(raw, test, per_feature=False)
    objective = Elbo(float(train.min()), float(train.max()))
    assert torch.allclose(objective.pixels(train), raw, atol=1e-5)
    assert torch.allclose(objective.pixels(standard_test), test, atol=1e-5)


def test_evaluation_is_deterministic_whatever_the_global_generator():
    model = build_model("vae", ModelSpec((64,), 10, hidden=(32, 4)))
    objective, x = Elbo(0.0, 1.0), torch.rand(300, 64)
    first = loop.evaluate(model, x, x, objective)
    torch.manual_seed(123)
    assert loop.evaluate(model, x, x, objective) == first and first[0] == first[1]
    torch.manual_seed(5)
    assert objective.loss(model, x, x).item() != objective.loss(model, x, x).item()  # training samples anew


@pytest.mark.parametrize("method", ["set", "adaptive", "static", "dense"])
def test_two_epochs_lower_the_test_elbo_of_every_method(tmp_path, method):
    config = build_config(None, {**VAE_SETUP, "method": method, "epochs": 2, "out": str(tmp_path)})
    trainer = loop.Trainer(config, progress=False)
    untrained, _ = loop.evaluate(trainer.model, trainer.x_test, trainer.y_test, trainer.objective)
    result = trainer.run()
    curve = [epoch["test_acc"] for epoch in result["epochs"]]
    assert result["metric"] == "neg_elbo_nats" and curve[-1] < untrained
    assert [epoch["test_loss"] for epoch in result["epochs"]] == curve
    assert result["best_test_acc"] == min(curve) and result["final_test_acc"] == curve[-1]
    if method in ("set", "adaptive"):
        assert sum(epoch["connections_changed"] for epoch in result["epochs"]) > 0
    if method != "dense":
        assert result["density_final"] == pytest.approx(0.3, abs=0.01)


def test_a_vae_comparison_labels_the_metric_and_drops_accuracy_targets(tmp_path):
    settings = {**VAE_SETUP, "epochs": 1, "out": str(tmp_path)}
    summary = run_comparison(plan_comparison(["static", "set"], seed_count=1, overrides=settings), progress=False)
    assert summary["metric"] == "neg_elbo_nats" and summary["targets"] == []
    assert result_metric(summary) is NEGATIVE_ELBO
    assert markdown_table(summary).startswith(
        "| method | final -ELBO | -ELBO at val-selected epoch | best test -ELBO (info) | ARA | active params"
    )
    result = json.loads((tmp_path / "set" / "seed0" / "result.json").read_text())
    assert summary["methods"]["set"]["best_acc"]["mean"] == result["best_test_acc"]


def test_results_written_before_the_metric_key_hold_accuracy():
    assert result_metric({"final_test_acc": 0.9}) is ACCURACY
    with pytest.raises(UsageError, match="unknown metric"):
        result_metric({"metric": "bleu"})
