"""Evaluation sums on the device and reads them once: the same numbers as per-batch reads, one host sync."""

import torch
from torch.nn import functional as F

from conftest import small_mlp
from evosparse.engine.objectives import EVAL_BATCH, Classification, flat_predictions


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
