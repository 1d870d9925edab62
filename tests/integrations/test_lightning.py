import pytest
import torch
from torch import nn
from torch.nn import functional as F

L = pytest.importorskip("lightning")

from evosparse.integrations.lightning import SparsityCallback  # noqa: E402


class Tiny(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 3))

    def training_step(self, batch, batch_index):
        x, y = batch
        return F.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)


def loader():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(256, 10, generator=generator)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 1).long()
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32)


def fit(callback, epochs=3, accumulate=1):
    module = Tiny()
    trainer = L.Trainer(
        max_epochs=epochs,
        callbacks=[callback],
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accumulate_grad_batches=accumulate,
    )
    trainer.fit(module, loader())
    return module, trainer


def test_callback_keeps_the_module_sparse_and_evolves_it_each_epoch():
    callback = SparsityCallback("set", density=0.3, seed=0)
    module, trainer = fit(callback)
    s = callback.sparsifier
    assert s.density() == pytest.approx(0.3, abs=0.01)
    logged = trainer.callback_metrics
    assert float(logged["sparsity/density"]) == pytest.approx(s.density())
    for report in s.layer_reports():  # each layer's density is logged too
        assert float(logged[f"sparsity/{report.name}"]) == pytest.approx(report.density)
    assert s.epoch == 3 and s.global_step == 3 * 8
    for layer in s.topology.layers:
        assert not layer.weight.detach()[~layer.mask].any()
    saved = s.state_dict()["topology"]
    assert list(saved) == [layer.name for layer in s.topology.layers] == ["net.0.weight", "net.2.weight"]
    for layer in s.topology.layers:
        assert torch.equal(saved[layer.name]["positions"], layer.mask.reshape(-1).nonzero().squeeze(1))


def test_step_follows_optimizer_steps_not_batches_when_accumulating():
    callback = SparsityCallback("set", density=0.3, seed=0)
    fit(callback, epochs=2, accumulate=2)
    assert callback.sparsifier.global_step == 2 * 4


def test_callback_state_restores_masks():
    first = SparsityCallback("set", density=0.3, seed=0)
    fit(first, epochs=2)
    second = SparsityCallback("set", density=0.3, seed=5)
    second.load_state_dict(first.state_dict())
    fit(second, epochs=0)
    for a, b in zip(first.sparsifier.topology.layers, second.sparsifier.topology.layers):
        assert torch.equal(a.mask, b.mask)
