"""A Lightning callback that sparsifies a LightningModule and drives its topology updates.

>>> trainer = lightning.Trainer(callbacks=[SparsityCallback("set", density=0.05)])

The sparsifier is built when fitting starts (once Lightning has created the optimizer), so that
optimizer state is reset where connections change. ``step()`` runs after every real optimizer step
(not after batches that only accumulate gradients) and ``end_epoch()`` after every training epoch. The
callback's state (masks, method state, counters) is saved in Lightning checkpoints. After every epoch
it logs the density (``sparsity/density``) and each sparse layer's (``sparsity/<layer name>``).
"""

from __future__ import annotations

from typing import Any

try:
    import lightning as L
except ImportError as error:  # pragma: no cover - exercised only without the optional dependency
    raise ImportError("evosparse.integrations.lightning needs Lightning: pip install 'evosparse[lightning]'") from error

from evosparse.errors import UsageError
from evosparse.sparsifier import Sparsifier


class SparsityCallback(L.Callback):
    """Keep the module sparse with ``method`` (any name from ``evosparse methods``) during ``fit``."""

    def __init__(self, method: str = "set", **sparsify_kwargs: Any) -> None:
        self.method = method
        self.sparsify_kwargs = sparsify_kwargs
        self.sparsifier: Sparsifier | None = None
        self._pending_state: dict[str, Any] | None = None
        self._last_global_step = 0

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if len(trainer.optimizers) != 1:
            raise UsageError(f"SparsityCallback supports one optimizer, the module has {len(trainer.optimizers)}")
        kwargs = {"total_steps": int(trainer.estimated_stepping_batches), **self.sparsify_kwargs}
        self.sparsifier = Sparsifier(pl_module, trainer.optimizers[0], self.method, **kwargs)
        if self._pending_state is not None:
            self.sparsifier.load_state_dict(self._pending_state)
            self._pending_state = None
        self._last_global_step = trainer.global_step

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if self.sparsifier is not None and trainer.global_step > self._last_global_step:
            self._last_global_step = trainer.global_step
            self.sparsifier.step()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.sparsifier is not None:
            self.sparsifier.end_epoch()
            pl_module.log("sparsity/density", self.sparsifier.density())
            for report in self.sparsifier.layer_reports():
                pl_module.log(f"sparsity/{report.name}", report.density)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.sparsifier is not None:
            self.sparsifier.remove()

    def state_dict(self) -> dict[str, Any]:
        return self.sparsifier.state_dict() if self.sparsifier is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Keep the state until fitting starts and the sparsifier exists."""
        self._pending_state = dict(state_dict) or None
