"""``--compile``: the compiled training forward pass sees every topology update (masks and csr or condensed
structures change outside it), trains as the eager model does, and is refused in one line where torch.compile fails."""

from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

import evosparse
from conftest import small_mlp
from evosparse.engine import loop
from evosparse.engine.compilation import compile_problem, compiled
from evosparse.engine.config import build_config
from evosparse.errors import UsageError
from support import batches


@pytest.fixture
def compiler():
    """Skip where torch.compile does not work on the CPU (found out when a test needs it, not at collection)."""
    problem = compile_problem("cpu")
    if problem is not None:
        pytest.skip(f"torch.compile fails here: {problem}")


@pytest.mark.parametrize("backend", ["masked", "csr", "condensed"])
def test_the_compiled_model_computes_what_the_eager_one_does_after_set_rewires_it(compiler, backend):
    torch.manual_seed(0)
    model = small_mlp()
    for index, module in enumerate(model):
        if isinstance(module, torch.nn.ReLU):  # in place on a sparse layer's output: legal in compiled code too
            model[index] = torch.nn.ReLU(inplace=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    per_unit = {"per_neuron": True} if backend == "condensed" else {}  # a constant fan-in for condensed
    sparsifier = evosparse.sparsify(model, optimizer, "set", density=0.3, backend=backend, seed=1, zeta=0.3, **per_unit)
    fast = compiled(model)
    for x, y in batches(3):
        optimizer.zero_grad()
        F.cross_entropy(fast(x), y).backward()
        optimizer.step()
        sparsifier.step()
    probe = batches(1, seed=9)[0][0]
    before = fast(probe).detach()
    positions = [layer.active_positions().clone() for layer in sparsifier.topology.layers]
    sparsifier.end_epoch()  # SET: prune the smallest, regrow at random, outside the compiled graph
    assert sparsifier.take_stats().connections_changed > 0
    moved = [layer.active_positions() for layer in sparsifier.topology.layers]
    assert any(not torch.equal(a, b) for a, b in zip(positions, moved, strict=True))
    after = fast(probe).detach()
    assert not torch.equal(after, before)
    torch.testing.assert_close(after, model(probe).detach(), rtol=1e-6, atol=1e-6)
    torch._dynamo.reset()  # else the code compiled above serves again, whatever the backend
    traced = torch.compile(model, backend="aot_eager")  # autograd traced too: in-place ReLU on a traced output
    torch.testing.assert_close(traced(probe), model(probe), rtol=1e-6, atol=1e-6)
    for layer in sparsifier.topology.layers:
        if getattr(layer, "mask", None) is not None:
            assert not layer.weight[~layer.mask].any(), layer.name


def config(out: Path, **overrides):
    base = {"epochs": 2, "hidden": "48", "density": 0.3, "out": str(out), "batch_size": 64, "device": "cpu"}
    return build_config(None, {**base, **overrides})


def test_a_compiled_run_trains_as_the_eager_run_does(compiler, tmp_path):
    eager = loop.train(config(tmp_path / "eager"), progress=False)
    trainer = loop.Trainer(config(tmp_path / "compiled", compile=True), progress=False)
    assert getattr(trainer.train_model, "_orig_mod", None) is trainer.model  # trains through torch.compile
    fast = trainer.run()
    assert fast["compile"] is True and eager["compile"] is False
    for one, other in zip(fast["epochs"], eager["epochs"], strict=True):
        assert one["train_loss"] == pytest.approx(other["train_loss"], rel=1e-4)
        assert one["test_acc"] == pytest.approx(other["test_acc"], abs=0.01)
    assert fast["epochs"][0]["connections_changed"] == eager["epochs"][0]["connections_changed"] > 0


def test_compile_is_refused_in_one_line_where_torch_compile_fails(tmp_path, monkeypatch):
    def no_compiler(*args, **kwargs):
        raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found\nmore details")

    compile_problem.cache_clear()
    monkeypatch.setattr(torch, "compile", no_compiler)
    try:
        with pytest.raises(UsageError) as refusal:
            loop.train(config(tmp_path / "run", compile=True), progress=False)
    finally:
        compile_problem.cache_clear()  # the next caller finds out about the real torch.compile
    message = str(refusal.value)
    assert message == (
        "--compile: torch.compile does not work on cpu here (InvalidCxxCompiler: No working C++ compiler found); "
        "run without it"
    )
