"""Evaluation sums on the device and reads them once: the same numbers as per-batch reads, one host sync."""

import torch
from torch import nn
from torch.nn import functional as F

from conftest import small_mlp
from evosparse import sparsify
from evosparse.engine import objectives
from evosparse.engine.objectives import EVAL_BATCH, Classification, Elbo, evaluation_chunk, flat_predictions
from evosparse.models.vae import VAE


def per_batch_reads(model, x, y):
    """The evaluation as it was: each batch's loss and hits read to the host and summed in Python."""
    loss_sum, correct = 0.0, 0
    for start in range(0, x.shape[0], EVAL_BATCH):
        logits, target = flat_predictions(model(x[start : start + EVAL_BATCH]), y[start : start + EVAL_BATCH])
        loss_sum += F.cross_entropy(logits, target, reduction="sum").item()
        correct += int((logits.argmax(dim=1) == target).sum().item())
    return loss_sum / y.numel(), correct / y.numel()


def test_classification_evaluates_exactly_as_per_batch_reads_with_one_read_per_number(monkeypatch):
    torch.manual_seed(0)
    model = small_mlp((20, 16, 5)).eval()
    x, y = torch.randn(2 * EVAL_BATCH + 77, 20), torch.randint(0, 5, (2 * EVAL_BATCH + 77,))
    with torch.no_grad():
        expected = per_batch_reads(model, x, y)
        reads = []
        for name in ("item", "__float__", "__int__"):
            real = getattr(torch.Tensor, name)
            monkeypatch.setattr(torch.Tensor, name, lambda self, real=real, name=name: reads.append(name) or real(self))
        found = Classification().evaluate(model, x, y)
    assert found == expected  # exactly: float64 sums on the device equal Python's float sums
    assert len(reads) == 2, reads  # one read for the loss, one for the hits, however many batches


def passes_of(model: nn.Module) -> list[int]:
    """A list that receives the batch size of every forward pass of ``model`` from now on."""
    sizes: list[int] = []
    model.register_forward_pre_hook(lambda module, args: sizes.append(args[0].shape[0]))
    return sizes


def test_a_wide_model_is_evaluated_in_passes_whose_widest_activation_fits_the_budget(monkeypatch):
    """A csr MLP 3000 wide: 12 000 bytes a sample in its widest layer; a budget of 9 samples gives passes of
    9, and the same accuracy and loss as one pass over all samples; a budget below EVAL_MIN_BATCH gives passes
    of that many."""
    torch.manual_seed(1)
    model = small_mlp((20, 3000, 5))
    sparsify(model, None, "static", density=0.05, backend="csr")
    model.eval()
    x, y = torch.randn(50, 20), torch.randint(0, 5, (50,))
    with torch.no_grad():
        assert (
            evaluation_chunk(model, lambda: model(x[:1])) == objectives.EVAL_ACTIVATION_BYTES // (3000 * 4) < EVAL_BATCH
        )
        whole = Classification().evaluate(model, x, y)
        monkeypatch.setattr(objectives, "EVAL_ACTIVATION_BYTES", 9 * 3000 * 4 + 5)
        assert evaluation_chunk(model, lambda: model(x[:1])) == 9
        sizes = passes_of(model)
        chunked = Classification().evaluate(model, x, y)
        assert sizes[1:] == [9] * 5 + [5]  # after the one-sample pass that measures the activations
        monkeypatch.setattr(objectives, "EVAL_ACTIVATION_BYTES", 3 * 3000 * 4)
        assert evaluation_chunk(model, lambda: model(x[:1])) == objectives.EVAL_MIN_BATCH == 8
    assert chunked[1] == whole[1]
    assert abs(chunked[0] - whole[0]) <= 1e-6 * whole[0]  # float32 sums per pass, added up in float64


def test_the_elbo_does_not_depend_on_the_size_of_the_passes(monkeypatch):
    torch.manual_seed(2)
    model = VAE(12, hidden=(40,), latent=3).eval()
    x = torch.rand(30, 12)
    objective = Elbo(0.0, 1.0)
    with torch.no_grad():
        whole = objective.evaluate(model, x, torch.zeros(30))
        monkeypatch.setattr(objectives, "EVAL_ACTIVATION_BYTES", 9 * 40 * 4)  # 9 samples of the 40-unit layer
        sizes = passes_of(model)
        chunked = objective.evaluate(model, x, torch.zeros(30))
    assert sizes[1:] == [9] * 3 + [3]
    assert abs(chunked[0] - whole[0]) < 1e-6 * abs(whole[0])
