"""A Hugging Face ``Trainer`` callback that sparsifies the model and drives its topology updates.

>>> trainer = transformers.Trainer(model, args, train_dataset=data, callbacks=[SparsityCallback("set", density=0.1)])

The sparsifier is built when training begins: the Trainer has created the optimizer by then, so its
state is reset where connections change, and ``total_steps`` is the Trainer's ``max_steps``. ``step()``
runs after every optimizer step (``on_step_end``; micro-batches that only accumulate gradients end in
``on_substep_end``) and ``end_epoch()`` after every epoch. The linear layers, convolutions and
``transformers.pytorch_utils.Conv1D`` (GPT-2's projections, weight stored (in, out)) become sparse.

**Checkpoints.** Every checkpoint the Trainer saves gets the sparsifier's state as
``evosparse_sparsifier.pt`` in its folder. When training resumes (the Trainer's ``global_step`` is
above 0 when training begins), the state is read from ``{output_dir}/checkpoint-{global_step}``, the
folder the Trainer writes and ``resume_from_checkpoint=True`` picks; the model's weights and the
optimizer's state come from the Trainer's own checkpoint. A resumed run then goes on exactly as the
uninterrupted one.

**Logs.** Every time the Trainer logs, the callback adds ``sparsity/density`` and each sparse layer's
density (``sparsity/<layer name>``) to the logged values and to ``state.log_history``. Callbacks see
the logs in order, so the reporting integrations of ``report_to`` (created before the user's callbacks)
receive them without these keys; callbacks after this one receive them.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

try:
    from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
except ImportError as error:  # pragma: no cover - exercised only without the optional dependency
    raise ImportError("evosparse.integrations.huggingface needs transformers: pip install 'evosparse[hf]'") from error

import torch

from evosparse.errors import UsageError
from evosparse.files import atomic_write_bytes
from evosparse.sparsifier import Sparsifier

#: The file holding the sparsifier's state in each of the Trainer's checkpoint folders.
STATE_FILE = "evosparse_sparsifier.pt"


def checkpoint_folder(args: TrainingArguments, state: TrainerState) -> Path:
    """The folder of the checkpoint the Trainer saves (or resumed from) at ``state.global_step``."""
    return Path(str(args.output_dir)) / f"checkpoint-{state.global_step}"  # TrainingArguments fills a None in


class SparsityCallback(TrainerCallback):
    """Keep the model sparse with ``method`` (any name from ``evosparse methods``) during ``Trainer.train``.

    ``sparsify_kwargs`` go to :class:`~evosparse.sparsifier.Sparsifier` (``density``, ``seed``,
    ``include``, ...); the masked backend only, as the Trainer saves and loads the model's own modules.
    """

    def __init__(self, method: str = "set", **sparsify_kwargs: Any) -> None:
        if sparsify_kwargs.get("backend", "masked") != "masked":
            raise UsageError("SparsityCallback runs the masked backend: the Trainer checkpoints the model's own layers")
        self.method = method
        self.sparsify_kwargs = sparsify_kwargs
        self.sparsifier: Sparsifier | None = None

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        model, optimizer = kwargs["model"], kwargs["optimizer"]
        saved = self._saved_state(args, state)
        # Building the sparsifier re-draws the sparse weights; a resumed run keeps the checkpoint's.
        weights = {name: value.detach().clone() for name, value in model.state_dict().items()} if saved else None
        options = {"total_steps": state.max_steps, **self.sparsify_kwargs}
        self.sparsifier = Sparsifier(model, optimizer, self.method, **options)
        if saved is not None and weights is not None:
            model.load_state_dict(weights)
            try:
                self.sparsifier.load_state_dict(saved)
            except UsageError:  # another plan (method, density, max_steps): leave the model as it was loaded
                self.sparsifier.remove()
                self.sparsifier = None
                model.load_state_dict(weights)
                raise

    def _saved_state(self, args: TrainingArguments, state: TrainerState) -> dict[str, Any] | None:
        """The sparsifier state of the checkpoint the Trainer resumed from; None for a fresh run."""
        if state.global_step == 0:
            return None
        path = checkpoint_folder(args, state) / STATE_FILE
        if not path.is_file():
            raise UsageError(
                f"training resumes at step {state.global_step} but {path} does not exist: resume from a checkpoint "
                "of this output_dir that SparsityCallback saved"
            )
        saved: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
        return saved

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        if self.sparsifier is not None:
            self.sparsifier.step()

    def on_epoch_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self.sparsifier is not None:
            self.sparsifier.end_epoch()

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        if self.sparsifier is None:
            return
        densities = {"sparsity/density": self.sparsifier.density()}
        densities.update({f"sparsity/{report.name}": report.density for report in self.sparsifier.layer_reports()})
        kwargs["logs"].update(densities)
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(densities)

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        if self.sparsifier is not None and args.should_save:
            buffer = io.BytesIO()
            torch.save(self.sparsifier.state_dict(), buffer)
            atomic_write_bytes(checkpoint_folder(args, state) / STATE_FILE, buffer.getbuffer())

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self.sparsifier is not None:
            self.sparsifier.remove()
