"""The training loop behind ``evosparse train``: data, model, sparsifier, evaluation, checkpoints."""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from evosparse.analysis.plots import plot_run_curves
from evosparse.analysis.snapshots import SNAPSHOT_DIR, save_snapshot
from evosparse.backends.csr_build import build_for_backend, direct_draw_applies
from evosparse.data import Dataset, load_dataset
from evosparse.data.augment import random_crop_flip
from evosparse.data.subset import subset_training
from evosparse.data.validation import split_validation
from evosparse.distributed import (
    DistributedContext,
    context_from_environment,
    group_exists,
    initialise,
    shard,
    shutdown,
)
from evosparse.engine.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from evosparse.engine.compilation import check_compile, compiled
from evosparse.engine.config import TrainConfig, config_difference, device_type
from evosparse.engine.fixed_topology import hold_fixed_topology
from evosparse.engine.inference_cost import inference_macs
from evosparse.engine.loss_readings import READ_INTERVAL, LossReadings
from evosparse.engine.lr_schedule import build_scheduler
from evosparse.engine.objectives import Objective, objective_for
from evosparse.engine.precision import autocast, check_precision
from evosparse.engine.records import (
    RESULT_NAME,
    EpochRecord,
    build_result,
    write_layers_csv,
    write_metrics_csv,
    write_result,
)
from evosparse.engine.reference_step import ReferenceStep
from evosparse.engine.run_folder import locked_folder
from evosparse.engine.run_logging import EpochLogger, RunLogging, epoch_scalars
from evosparse.engine.training_cost import TrainingCost, TrainingCostMeter
from evosparse.engine.update_schedule import check_updates, idle_reason
from evosparse.engine.wide_layers import apply_wide_layer_rules
from evosparse.engine.width_scaling import scale_widths
from evosparse.errors import EvosparseError, UsageError
from evosparse.files import check_writable
from evosparse.models import ModelSpec, architecture_of, build_model
from evosparse.models.parts import excluded_layers
from evosparse.sparsifier import Sparsifier
from evosparse.topology.groups import group_densities


def resolve_device(name: str, context: DistributedContext | None = None) -> torch.device:
    """The requested device (``auto``: CUDA when present, else the CPU; under torchrun, CUDA device
    LOCAL_RANK), or a one-line error for ``cuda`` without CUDA."""
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was requested but no CUDA device is available")
    kind = device_type(name)
    if kind == "cuda" and context is not None and context.active:
        return torch.device("cuda", context.local_rank)
    return torch.device(kind)


def make_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """SGD (momentum, Nesterov, weight decay), Adam or RMSProp (PyTorch's defaults otherwise, no momentum)
    over all of ``model``'s parameters."""
    if config.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "rmsprop":
        return torch.optim.RMSprop(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(
        model.parameters(),
        lr=config.lr,
        momentum=config.momentum,
        nesterov=config.nesterov,
        weight_decay=config.weight_decay,
    )


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int) -> Iterator[torch.Tensor]:
    """Index batches of one epoch; the shuffle depends only on (seed, epoch), so a resumed run replays it."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(n, generator=generator)
    yield from order.split(batch_size)


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, objective: Objective) -> tuple[float, float]:
    """Mean loss and metric of ``model`` on (x, y) in eval mode (cross-entropy and accuracy for a
    classifier, the −ELBO twice for a VAE)."""
    model.eval()
    return objective.evaluate(model, x, y)


class Trainer:
    """One run of ``evosparse train``: builds everything from a config, trains, records, checkpoints."""

    def __init__(
        self,
        config: TrainConfig,
        *,
        console: Console | None = None,
        progress: bool = True,
        logging: RunLogging = RunLogging(),
    ) -> None:
        self.config = config
        self.logging = logging
        self.console = console or Console(stderr=True)
        self.context = context_from_environment()
        if self.context.active and config.out is None:
            raise UsageError("under torchrun pass --out DIR, so that every process uses the same folder")
        self.out = config.output_folder()
        self.show_progress = progress and self.context.is_leader
        self.device = resolve_device(config.device, self.context)
        check_precision(config.precision, config.backend, self.device)
        if config.compile:
            check_compile(self.device)
        if config.batch_size % self.context.world_size:
            raise UsageError(
                f"--batch-size {config.batch_size} (the global batch) must be divisible by the "
                f"{self.context.world_size} processes"
            )
        initialise(self.context, self.device)
        loaded, self.validation = split_validation(
            load_dataset(
                config.dataset,
                data_dir=Path(config.data_dir) if config.data_dir else None,
                target=config.target,
                context=config.context,
            ),
            config.val_fraction,
        )
        self.data: Dataset = subset_training(loaded, config.train_fraction, config.seed)
        if config.augment and len(self.data.input_shape) != 3:
            shape = self.data.input_shape
            raise UsageError(f"--augment crops and flips images; {config.dataset} samples have shape {shape}")
        torch.manual_seed(config.seed)
        spec = ModelSpec(
            self.data.input_shape,
            self.data.num_classes,
            sequence=self.data.y_train.dim() == 2,
            hidden=tuple(config.hidden) if config.hidden else None,
            dropout=config.dropout,
            heads=config.heads,
            sparse_embeddings=config.sparse_embeddings,
        )
        self.spec, self.width_scaling = scale_widths(
            spec,
            model=config.model,
            sparsify=config.sparsify,
            width_scale=config.width_scale,
            distribution=config.effective_distribution,
            density=config.effective_density,
            epsilon=config.epsilon,
        )
        self.model = build_for_backend(
            config.backend,
            lambda: build_model(config.model, self.spec),
            self.device,
            direct=lambda skeleton: direct_draw_applies(
                skeleton,
                config.init,
                getattr(skeleton, "sparse_include", None),
                excluded_layers(skeleton, config.sparsify),
            ),
        )
        self.optimizer = make_optimizer(config, self.model)
        full, rest = divmod(self.data.x_train.shape[0], config.batch_size)
        self.steps_per_epoch = full + (rest >= self.context.world_size)
        self.sparsifier = Sparsifier(
            self.model,
            self.optimizer,
            config.method,
            density=config.effective_density,
            epsilon=config.epsilon,
            distribution=config.effective_distribution,
            init=config.init,
            total_steps=config.epochs * self.steps_per_epoch,
            seed=config.seed,
            backend=config.backend,
            include=getattr(self.model, "sparse_include", None),
            exclude=excluded_layers(self.model, config.sparsify),
            **config.params,
        )
        if config.fixed_topology_from is not None and not self.checkpoint_path.exists():
            # A checkpoint, once restored, holds these masks already: the source need not exist any more.
            hold_fixed_topology(self.sparsifier, config)
        # Once the weights are initialised over their final topology: wide layers' rates and readout scale.
        self.wide_layers = apply_wide_layer_rules(self.model, self.optimizer, self.sparsifier)
        # After the Sparsifier, which may add parameter groups (LiSET's skip layers) that must be scheduled too.
        self.lr_scheduler = build_scheduler(
            self.optimizer,
            config.lr_schedule,
            epochs=config.epochs,
            steps_per_epoch=self.steps_per_epoch,
            warmup_epochs=config.warmup_epochs,
            milestones=config.lr_milestones,
            gamma=config.lr_gamma,
        )
        self.objective = objective_for(self.model, self.data)
        self.model.to(self.device)  # a csr model is made sparse on the CPU (see build_for_backend)
        self.x_train, self.y_train = self.data.x_train.to(self.device), self.data.y_train.to(self.device)
        self.x_test, self.y_test = self.data.x_test.to(self.device), self.data.y_test.to(self.device)
        self.val: tuple[torch.Tensor, torch.Tensor] | None = (
            None
            if self.data.x_val is None or self.data.y_val is None
            else (self.data.x_val.to(self.device), self.data.y_val.to(self.device))
        )
        self.train_model: nn.Module = self.model
        if self.context.active:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_model = DistributedDataParallel(self.model, device_ids=device_ids)
        if config.compile:
            self.train_model = compiled(self.train_model)
        self.cost_meter = TrainingCostMeter(self.model, self.x_train[:1], self.sparsifier)
        first_batch = slice(0, config.batch_size // self.context.world_size)
        self.reference = ReferenceStep(
            lambda: build_model(config.model, self.spec),
            lambda model: make_optimizer(config, model),
            self.objective,
            self.x_train[first_batch],
            self.y_train[first_batch],
            enabled=config.backend != "csr",
        )
        self.epochs: list[EpochRecord] = []
        self.wall_time_before = 0.0

    # -- checkpointing --------------------------------------------------------------------------

    @property
    def checkpoint_path(self) -> Path:
        return self.out / CHECKPOINT_NAME

    def _checkpoint_state(self, wall_time_s: float) -> dict[str, Any]:
        return {
            "config": self.config.to_dict(),
            "epoch": len(self.epochs),
            "epochs": [asdict(record) for record in self.epochs],
            "wall_time_s": wall_time_s,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "sparsifier": self.sparsifier.state_dict(),
            "lr_scheduler": self.lr_scheduler.state_dict() if self.lr_scheduler else None,
            "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else [],
            "device": self.device.type,
        }

    def restore(self, resume: bool, ignore: tuple[str, ...] = (), *, if_present: bool = False) -> None:
        """Continue from ``out/checkpoint.pt`` when resuming; refuse to overwrite a run otherwise.

        Resuming needs the checkpoint to be there, unless ``if_present`` (then the run starts afresh).
        A larger ``epochs`` than the checkpoint's extends the run (finished or not), exactly as if it had
        been planned that long, where nothing of its past depends on the planned length (no cosine
        learning-rate schedule, no topology schedule over training).
        """
        if not self.checkpoint_path.exists():
            if resume and not if_present:
                raise UsageError(
                    f"--resume: {self.out} holds no checkpoint to continue (is --out right?); "
                    "--resume-if-present starts the run when there is none"
                )
            return
        if not resume:
            raise UsageError(f"{self.out} already holds a run; pass --resume to continue it or choose another --out")
        state = load_checkpoint(self.checkpoint_path)
        saved_epochs = state.get("config", {}).get("epochs")
        extending = isinstance(saved_epochs, int) and saved_epochs != self.config.epochs
        if extending:
            self._check_extension(saved_epochs, len(state["epochs"]))
        difference = config_difference(state.get("config", {}), self.config, ignore=(*ignore, "epochs", "device"))
        if difference:
            key, before, now = difference
            raise UsageError(f"the checkpoint in {self.out} was made with {key}={before!r}, this run has {now!r}")
        # Where the run trained (a checkpoint older than this key: its configured device, never ``auto``).
        trained_on = state.get("device", device_type(str(state.get("config", {}).get("device", "cpu"))))
        if trained_on != self.device.type:
            raise UsageError(
                f"the checkpoint in {self.out} was made on {trained_on}, this run is on {self.device.type} "
                f"(--device {self.config.device}); resume it with --device {trained_on}"
            )
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.sparsifier.load_state_dict(state["sparsifier"])
            if self.lr_scheduler is not None:
                self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        except UsageError as error:  # a refusal in words of its own: kept whole
            raise UsageError(f"checkpoint in {self.out}: {error}") from None
        except (KeyError, RuntimeError, ValueError) as error:
            reason = str(error).splitlines()[0][:120]
            raise UsageError(f"checkpoint in {self.out} does not fit this model ({reason})") from None
        torch.set_rng_state(state["rng_cpu"])
        if state["rng_cuda"]:
            torch.cuda.set_rng_state_all(state["rng_cuda"])
        self.epochs = [EpochRecord(**record) for record in state["epochs"]]
        self.wall_time_before = float(state["wall_time_s"])
        if extending:  # the finished run's summary no longer describes the run: it is rewritten at the end
            (self.out / RESULT_NAME).unlink(missing_ok=True)

    def _check_extension(self, saved_epochs: int, done: int) -> None:
        """Refuse in one line to change the planned length of a run whose past depends on it."""
        config = self.config
        if config.epochs < max(saved_epochs, done):
            raise UsageError(
                f"the run in {self.out} is planned for {saved_epochs} epochs ({done} done): --epochs can only grow"
            )
        if config.lr_schedule == "cosine":
            raise UsageError(
                f"the run in {self.out} decays its learning rate over {saved_epochs} epochs (--lr-schedule "
                "cosine): it cannot be extended; start a longer run"
            )
        method = self.sparsifier.method
        if method.sparse and (method.needs_total_steps or self.sparsifier.hparams.get("update_until", 1.0) < 1.0):
            raise UsageError(
                f"{config.method} in {self.out} schedules its topology updates over the planned {saved_epochs} "
                "epochs: it cannot be extended; start a longer run"
            )

    # -- training -------------------------------------------------------------------------------

    def train_epoch(self, epoch: int, on_step: Callable[[float], None]) -> tuple[float, float, TrainingCost]:
        """One pass over the shuffled training data; returns the mean training loss, the learning
        rate of its last step (the first parameter group's) and the multiply-adds it spent.
        ``on_step`` receives, after every step, the mean training loss of the steps read so far: losses
        stay on the device and are read every ``READ_INTERVAL`` steps, before each topology update and at
        the end (:mod:`~evosparse.engine.loss_readings`), so a step never waits for the device."""
        self.model.train()
        cost = TrainingCost()
        batches = epoch_batches(self.x_train.shape[0], self.config.batch_size, self.config.seed, epoch)
        augment_generator = torch.Generator(self.device).manual_seed(self.config.seed * 1_000_003 + epoch + 104_729)
        losses = LossReadings(self.steps_per_epoch, self.device, self.context)
        lr = self.optimizer.param_groups[0]["lr"]
        for batch in batches:
            if batch.numel() < self.context.world_size:
                break  # a last global batch too small to give every process a sample
            global_size = batch.numel()
            batch = shard(batch, self.context).to(self.device)
            inputs = self.x_train[batch]
            if self.config.augment:
                inputs = random_crop_flip(inputs, augment_generator)
            with self._autocast():
                loss = self.objective.loss(self.train_model, inputs, self.y_train[batch])
            losses.record(loss, batch.numel(), global_size)
            if losses.pending >= READ_INTERVAL or self.sparsifier.update_pending():
                self._check_finite(losses, epoch)
            step_cost = self.cost_meter.step(global_size)
            cost.sparse += step_cost.sparse
            cost.dense += step_cost.dense
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            lr = self.optimizer.param_groups[0]["lr"]
            self.optimizer.step()
            self.sparsifier.step()
            if self.lr_scheduler is not None:
                self.lr_scheduler.step()
            on_step(losses.mean)
        self._check_finite(losses, epoch)
        return losses.mean, lr, cost

    def _check_finite(self, losses: LossReadings, epoch: int) -> None:
        """Read the pending losses; stop with one line naming the first step whose loss is not finite."""
        diverged = losses.read()
        if diverged is None:
            return
        kept = (
            f"the checkpoint of epoch {epoch - 1} is kept in {self.out}"
            if self.checkpoint_path.exists()
            else f"no checkpoint was written to {self.out} yet"
        )
        raise EvosparseError(
            f"training diverged: the loss is {diverged.value} at epoch {epoch}, step {diverged.step}; {kept} "
            "(try a smaller --lr)"
        )

    def run(self, resume: bool = False, *, if_present: bool = False) -> dict[str, Any]:
        """Train the remaining epochs, writing metrics and a checkpoint after each; return result.json.

        The leader writes into ``out``, which :func:`train` has created and locked, and names in a
        one-line warning a method that will not update its topology in the run.
        """
        self.restore(resume, if_present=if_present)
        idle = idle_reason(self.config)
        if idle is not None and self.context.is_leader:
            message = f"evosparse: warning: {idle}: it keeps its initial topology"
            self.console.print(message, soft_wrap=True, markup=False, highlight=False)
        started = time.perf_counter()
        config = self.config
        progress = self._progress()
        leader = self.context.is_leader
        loggers: list[EpochLogger] = (
            self.logging.open(self.out, config.to_dict(), len(self.epochs) + 1) if leader else []
        )
        with progress or nullcontext(), closing_all(loggers):
            task = (
                progress.add_task(
                    "training",
                    total=config.epochs * self.steps_per_epoch,
                    completed=len(self.epochs) * self.steps_per_epoch,
                )
                if progress
                else None
            )
            for epoch in range(len(self.epochs) + 1, config.epochs + 1):
                epoch_started = time.perf_counter()

                def advance(loss: float, epoch: int = epoch) -> None:
                    if progress is not None and task is not None:
                        shown = "" if math.isnan(loss) else f" loss {loss:.4f}"  # NaN: no loss read yet
                        progress.update(task, advance=1, description=f"epoch {epoch}/{config.epochs}{shown}")

                train_loss, lr, cost = self.train_epoch(epoch, advance)
                step_stats = self.sparsifier.take_stats()
                train_time = time.perf_counter() - epoch_started - step_stats.seconds
                with self._autocast():
                    test_loss, test_acc = evaluate(self.model, self.x_test, self.y_test, self.objective)
                    val_loss, val_acc = evaluate(self.model, *self.val, self.objective) if self.val else (None, None)
                    reference_step_s = self.reference.measure()  # the dense step in the run's precision
                density = self.sparsifier.density()
                layer_active = [report.active for report in self.sparsifier.layer_reports()]
                if leader and self.config.snapshots and self.sparsifier.method.sparse:
                    save_snapshot(self.out, epoch, self.sparsifier.topology)
                self.sparsifier.end_epoch()
                epoch_stats = self.sparsifier.take_stats()
                self.epochs.append(
                    EpochRecord(
                        epoch=epoch,
                        train_loss=train_loss,
                        test_loss=test_loss,
                        test_acc=test_acc,
                        density=density,
                        train_time_s=train_time,
                        topology_time_s=step_stats.seconds + epoch_stats.seconds,
                        connections_changed=step_stats.connections_changed + epoch_stats.connections_changed,
                        val_loss=val_loss,
                        val_acc=val_acc,
                        lr=lr,
                        layer_active=layer_active,
                        train_macs=cost.sparse,
                        train_macs_dense=cost.dense,
                        reference_step_s=reference_step_s,
                    )
                )
                layers = self._layers()
                for logger in loggers:
                    logger.log_epoch(epoch, epoch_scalars(self.epochs[-1], layers, self.objective.metric))
                if leader:
                    write_metrics_csv(self.out / "metrics.csv", self.epochs)
                    write_layers_csv(self.out / "layers.csv", self.epochs, layers)
                    save_checkpoint(self.checkpoint_path, self._checkpoint_state(self._wall(started)))
        result = build_result(
            header=self._header(),
            epochs=self.epochs,
            params_active=self.sparsifier.active_connections(),
            density_final=self.sparsifier.density(),
            wall_time_s=self._wall(started),
            metric=self.objective.metric,
            per_character=self.spec.sequence,
        )
        if self.context.is_leader:
            write_result(self.out / RESULT_NAME, result)
            title = f"{config.method} on {config.dataset}"
            plot_run_curves(self.out / "curves.png", result["epochs"], title, self.objective.metric)
        return result

    def _autocast(self) -> AbstractContextManager[Any]:
        """The context of the run's forward passes: bfloat16 autocast under ``--precision bf16``."""
        return autocast(self.config.precision, self.device)

    def _wall(self, started: float) -> float:
        return self.wall_time_before + time.perf_counter() - started

    def _progress(self) -> Progress | None:
        if not self.show_progress:
            return None
        return Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=self.console,
            transient=True,
        )

    def _inference_cost(self) -> dict[str, Any]:
        """Multiply-adds per sample of the model as exported (a switcher's gates folded in), sparse and dense."""
        model, positions = self.sparsifier.method.export_model()
        active: Counter[nn.Module] = Counter()
        for name, where in positions.items():
            active[model.get_submodule(name.rpartition(".")[0])] += int(where.numel())
        return inference_macs(model, self.x_train[:1], active)

    def _header(self) -> dict[str, Any]:
        config = self.config
        return {
            "method": config.method,
            "method_params": dict(config.params),
            "dataset": config.dataset,
            "model": config.model,
            "architecture": architecture_of(self.model),
            "heads": getattr(self.model, "heads", None),
            "context": self.data.input_shape[0] if self.spec.sequence else None,
            "sparse_embeddings": config.sparse_embeddings,
            "wide_layers": [asdict(wide) for wide in self.wide_layers],
            "backend": config.backend,
            "device": self.device.type,
            "precision": config.precision,
            "compile": config.compile,
            "seed": config.seed,
            "world_size": self.context.world_size,
            "density_target": self.sparsifier.density_target,
            "params_dense": self.sparsifier.topology.total,
            "params_extra_training": self.sparsifier.method.extra_parameters(),
            "method_log": self.sparsifier.method.log(),
            "optimizer": {
                "name": config.optimizer,
                "lr": config.lr,
                "momentum": config.momentum,
                "nesterov": config.nesterov,
                "weight_decay": config.weight_decay,
            },
            "lr_schedule": {
                "name": config.lr_schedule,
                "warmup_epochs": config.warmup_epochs,
                "milestones": config.lr_milestones,
                "gamma": config.lr_gamma,
            },
            "batch_size": config.batch_size,
            "steps_per_epoch": self.steps_per_epoch,
            "distribution": config.effective_distribution,
            "sparsify": config.sparsify,
            "augment": config.augment,
            "width_scaling": self.width_scaling.to_dict() if self.width_scaling else None,
            "fixed_topology_from": config.fixed_topology_from,
            "train_fraction": config.train_fraction,
            "train_samples": self.data.x_train.shape[0],
            "validation": self.validation.to_dict() if self.validation else None,
            "class_names": list(self.data.class_names) if self.data.class_names is not None else None,
            "inference_macs": self._inference_cost(),
            "layers": self._layers(),
            "layer_groups": self._layer_groups(),
        }

    def _layer_groups(self) -> list[dict[str, Any]] | None:
        """result.json's ``layer_groups``: the densities of the groups the model names (a transformer's blocks
        and heads, :mod:`~evosparse.topology.groups`); None for a model that names none."""
        groups = getattr(self.model, "density_groups", None)
        if groups is None:
            return None
        layers = {layer.name: layer for layer in self.sparsifier.topology.layers}
        return group_densities(groups(), layers)

    def _layers(self) -> list[dict[str, Any]]:
        """result.json's ``layers``: each sparse layer's name, shape, target and current density, active weights."""
        return [
            {
                "name": r.name,
                "shape": list(r.shape),
                "target_density": r.target_density,
                "density": r.density,
                "active": r.active,
            }
            for r in self.sparsifier.layer_reports()
        ]


@contextmanager
def closing_all(loggers: list[EpochLogger]) -> Iterator[None]:
    """Close every logger when the run ends, however it ends."""
    try:
        yield
    finally:
        for logger in loggers:
            logger.close()


def train(
    config: TrainConfig,
    *,
    resume: bool = False,
    resume_if_present: bool = False,
    progress: bool = True,
    logging: RunLogging = RunLogging(),
) -> dict[str, Any]:
    """Run (or continue) the training described by ``config``; return the result.json content.

    ``resume`` continues the checkpoint in ``config.out`` and refuses a folder without one, so a
    mistyped ``--out`` does not silently start afresh; ``resume_if_present`` continues it when there is
    one and starts the run otherwise. The output folder and the topology schedule are checked before
    any data is loaded, then the folder is locked for the whole run (a second process writing it is
    refused). ``logging`` adds TensorBoard and W&B logs (:mod:`~evosparse.engine.run_logging`).
    """
    if (resume or resume_if_present) and config.out is None:
        flag = "--resume-if-present" if resume_if_present else "--resume"
        raise UsageError(f"{flag} needs --out DIR, the folder of the run to continue")
    check_writable(config.output_folder(), "--out")
    check_updates(config)
    logging.check()
    owns_group = not group_exists()  # a group of the caller's own stays theirs to end
    trainer: Trainer | None = None
    completed = False
    try:
        trainer = Trainer(config, progress=progress, logging=logging)
        with locked_folder(trainer.out, sweep=(SNAPSHOT_DIR,)) if trainer.context.is_leader else nullcontext():
            result = trainer.run(resume=resume or resume_if_present, if_present=resume_if_present)
        completed = True
        return result
    finally:
        if trainer is not None:
            trainer.train_model = trainer.model  # the DDP wrapper's reducer holds the process group
        if owns_group:
            shutdown(wait_for_peers=completed)
