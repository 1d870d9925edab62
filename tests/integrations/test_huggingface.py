import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")  # the Trainer needs it

from transformers.pytorch_utils import Conv1D  # noqa: E402

from evosparse.errors import UsageError  # noqa: E402
from evosparse.integrations.huggingface import STATE_FILE, SparsityCallback  # noqa: E402

VOCAB, LENGTH = 50, 16


class Tokens(torch.utils.data.Dataset):
    """Random token sequences, with a class label (first token's parity) and the tokens as LM labels."""

    def __init__(self, size: int = 64) -> None:
        self.ids = torch.randint(VOCAB, (size, LENGTH), generator=torch.Generator().manual_seed(0))

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        ids = self.ids[index]
        return {"input_ids": ids, "labels": ids if self.causal else ids[0] % 2}


class CausalTokens(Tokens):
    causal = True


class ClassTokens(Tokens):
    causal = False


def gpt2():
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=VOCAB, n_positions=32, n_embd=32, n_layer=2, n_head=2, resid_pdrop=0, embd_pdrop=0, attn_pdrop=0
    )
    return transformers.GPT2LMHeadModel(config)


def bert():
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=32,
        hidden_dropout_prob=0,
        attention_probs_dropout_prob=0,
        num_labels=2,
    )
    return transformers.BertForSequenceClassification(config)


def train(model, data, callback, folder, *extra, max_steps=6, accumulate=1, save_steps=None, resume=None, epochs=1):
    args = transformers.TrainingArguments(
        output_dir=str(folder),
        max_steps=max_steps,
        num_train_epochs=epochs,
        per_device_train_batch_size=8,
        gradient_accumulation_steps=accumulate,
        learning_rate=1e-2,
        seed=0,
        data_seed=0,
        logging_steps=1,
        save_strategy="steps" if save_steps else "no",
        save_steps=save_steps or 500,
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
    )
    trainer = transformers.Trainer(model=model, args=args, train_dataset=data, callbacks=[callback, *extra])
    trainer.train(resume_from_checkpoint=resume)
    return trainer


class Watch(transformers.TrainerCallback):
    """Checks after every optimizer step (after the sparsifier's) that inactive weights are exactly zero."""

    def __init__(self, sparsity: SparsityCallback) -> None:
        self.sparsity, self.checked = sparsity, 0

    def on_step_end(self, args, state, control, **kwargs):
        for layer in self.sparsity.sparsifier.topology.layers:
            assert not layer.weight.detach()[~layer.mask].any()
            assert layer.active == layer.budget
        self.checked += 1


class Logs(transformers.TrainerCallback):
    def __init__(self) -> None:
        self.logs = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append(dict(logs))


def test_bert_stays_sparse_with_exact_budgets_and_logs_densities(tmp_path):
    callback = SparsityCallback("set", density=0.3, seed=0, update_unit="step", update_interval=2)
    seen = Logs()
    trainer = train(bert(), ClassTokens(), callback, tmp_path, seen, max_steps=6)
    s = callback.sparsifier
    assert s.global_step == 6 and s.take_stats().updates == 2
    assert s.density() == pytest.approx(0.3, abs=0.01)
    names = [layer.name for layer in s.topology.layers]
    assert "bert.encoder.layer.0.attention.self.query.weight" in names and "classifier.weight" in names
    assert not any("embeddings" in name for name in names)
    for layer, budget in zip(s.topology.layers, s.plan.budgets):
        assert layer.active == layer.budget == budget
        assert not layer.weight.detach()[~layer.mask].any()
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logged) == 6
    for report in s.layer_reports():
        assert logged[-1][f"sparsity/{report.name}"] == pytest.approx(report.density)
    assert logged[-1]["sparsity/density"] == pytest.approx(s.density())
    assert len(seen.logs) == 7 and all(logs["sparsity/density"] > 0 for logs in seen.logs)  # callbacks after it


def test_step_follows_optimizer_steps_not_micro_batches(tmp_path):
    callback = SparsityCallback("set", density=0.3, seed=0)
    watch = Watch(callback)
    model = bert()
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=4, gradient_accumulation_steps=2,
        report_to="none", use_cpu=True, disable_tqdm=True, save_strategy="no", seed=0,
    )  # fmt: skip
    transformers.Trainer(model=model, args=args, train_dataset=ClassTokens(), callbacks=[callback, watch]).train()
    assert callback.sparsifier.global_step == watch.checked == 3


def test_epochs_end_the_sparsifiers_epochs(tmp_path):
    callback = SparsityCallback("set", density=0.3, seed=0)
    train(bert(), ClassTokens(32), callback, tmp_path, max_steps=-1, epochs=2)
    assert callback.sparsifier.epoch == 2 and callback.sparsifier.global_step == 8


def test_gpt2_conv1d_layers_are_sparse_with_outputs_on_their_second_axis(tmp_path):
    model = gpt2()
    callback = SparsityCallback("set", density=0.05, seed=0)
    watch = Watch(callback)
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=8, report_to="none", use_cpu=True,
        disable_tqdm=True, save_strategy="no", learning_rate=0.0,
    )  # fmt: skip
    transformers.Trainer(model=model, args=args, train_dataset=CausalTokens(), callbacks=[callback, watch]).train()
    layers = callback.sparsifier.topology.layers
    conv1d = [layer for layer in layers if isinstance(layer.module, Conv1D)]
    assert [layer.name for layer in conv1d][:4] == [
        "transformer.h.0.attn.c_attn.weight",
        "transformer.h.0.attn.c_proj.weight",
        "transformer.h.0.mlp.c_fc.weight",
        "transformer.h.0.mlp.c_proj.weight",
    ]
    assert len(conv1d) == len(layers) == 8 and watch.checked == 1  # lm_head is tied to the token embedding
    for layer in conv1d:
        inputs, outputs = layer.shape
        assert layer.fan_out_axis_size == outputs == layer.module.nf
        assert layer.active >= outputs  # enough for the cover below, small enough to test it
        assert bool(layer.mask.any(dim=0).all())  # every output unit (column) has an input


def test_conv1d_weights_get_the_sparse_kaiming_scale_of_their_fan_in():
    from evosparse.sparsifier import Sparsifier

    model = torch.nn.Sequential(Conv1D(256, 4))  # 4 inputs, 256 outputs: stored (4, 256)
    s = Sparsifier(model, None, "set", density=0.5, distribution="uniform", seed=0)
    (layer,) = s.topology.layers
    assert layer.output_axis == 1 and layer.fan_out_axis_size == 256
    assert layer.weight[layer.mask].std().item() == pytest.approx((2 / 2) ** 0.5, rel=0.1)  # fan-in 512/256 = 2


def test_conv1d_keep_largest_keeps_each_output_units_largest_input():
    from evosparse.sparsifier import Sparsifier

    model = torch.nn.Sequential(Conv1D(6, 5))
    weight = model[0].weight.detach().clone()
    s = Sparsifier(model, None, "set", density=0.2, distribution="uniform", init="keep_largest", seed=0)
    (layer,) = s.topology.layers
    expected = torch.zeros(5, 6, dtype=torch.bool)
    expected[weight.abs().argmax(dim=0), torch.arange(6)] = True  # the largest input of each output unit
    assert torch.equal(layer.mask, expected)


def test_methods_reading_input_units_refuse_conv1d():
    from evosparse.sparsifier import Sparsifier

    with pytest.raises(UsageError, match="stored \\(in, out\\)"):
        Sparsifier(gpt2(), None, "sensitivity", density=0.2)


def trained_state(trainer):
    return {name: value.clone() for name, value in trainer.model.state_dict().items()}


@pytest.mark.parametrize("build,data", [(gpt2, CausalTokens), (bert, ClassTokens)], ids=["gpt2", "bert"])
def test_resuming_from_a_checkpoint_repeats_the_uninterrupted_run(tmp_path, build, data):
    def callback():
        return SparsityCallback("rigl", density=0.2, seed=0, update_unit="step", update_interval=2)

    whole = callback()
    full = train(build(), data(), whole, tmp_path / "full", max_steps=8, save_steps=3)
    assert (tmp_path / "full" / "checkpoint-3" / STATE_FILE).is_file()
    resumed = callback()
    checkpoint = str(tmp_path / "full" / "checkpoint-3")
    again = train(build(), data(), resumed, tmp_path / "full", max_steps=8, resume=checkpoint)
    assert resumed.sparsifier.global_step == 8
    for a, b in zip(whole.sparsifier.topology.layers, resumed.sparsifier.topology.layers):
        assert torch.equal(a.mask, b.mask)
    for (name, a), b in zip(trained_state(full).items(), trained_state(again).values()):
        assert torch.equal(a, b), name
    losses = [entry["loss"] for entry in full.state.log_history if "loss" in entry]
    resumed_losses = [entry["loss"] for entry in again.state.log_history if "loss" in entry]
    assert resumed_losses == losses  # the first 3 from the checkpoint's log history, the rest computed again


def test_resuming_without_the_sparsifier_state_is_refused(tmp_path):
    train(bert(), ClassTokens(), SparsityCallback("set", density=0.3), tmp_path, max_steps=4, save_steps=2)
    (tmp_path / "checkpoint-4" / STATE_FILE).unlink()
    with pytest.raises(UsageError, match="checkpoint-4"):
        train(bert(), ClassTokens(), SparsityCallback("set", density=0.3), tmp_path, max_steps=6, resume=True)


def test_resuming_with_another_plan_is_refused_and_leaves_the_model_unsparsified(tmp_path):
    train(bert(), ClassTokens(), SparsityCallback("rigl", density=0.3), tmp_path, max_steps=4, save_steps=4)
    callback, model = SparsityCallback("rigl", density=0.3), bert()
    with pytest.raises(UsageError, match="total_steps=4"):  # RigL's schedule spans training
        train(model, ClassTokens(), callback, tmp_path, max_steps=6, resume=True)
    assert callback.sparsifier is None
    state = transformers.TrainerState(max_steps=6)  # and the model can be sparsified again
    SparsityCallback("set", density=0.3).on_train_begin(None, state, None, model=model, optimizer=None)


def test_csr_backend_is_refused():
    with pytest.raises(UsageError, match="masked backend"):
        SparsityCallback("set", density=0.3, backend="csr")
