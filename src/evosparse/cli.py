"""The ``evosparse`` command line (contract: ARCHITECTURE.md section 5).

Exit status: 0 success; 2 bad usage, configuration or data (one line on stderr, no traceback);
1 any other failure.
"""

from __future__ import annotations

import copy
import functools
import inspect
import os
import shlex
import sys
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from evosparse.backends.registry import BACKENDS
from evosparse.data import DATASETS, FILE_DATASETS
from evosparse.engine.config import DEVICES, OPTIMIZERS
from evosparse.engine.lr_schedule import LR_SCHEDULES
from evosparse.engine.precision import PRECISIONS
from evosparse.errors import EvosparseError, UsageError
from evosparse.models import MODELS
from evosparse.models.parts import PART_TYPES
from evosparse.topology.distributions import DISTRIBUTIONS
from evosparse.topology.init import INIT_SCHEMES

app = typer.Typer(
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="Dynamic sparse training for PyTorch: train, compare and inspect sparse networks.",
)


def one_of(names: Any) -> str:
    """``"a, b or c"``: the names of a registry, for help texts generated from it (never kept by hand)."""
    names = [str(name) for name in names]
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def readme_blocks() -> dict[str, str]:
    """The README's generated blocks (name -> Markdown), built from the registries.

    ``scripts/sync_readme.py`` writes them between ``<!-- generated:NAME -->`` and ``<!-- end:NAME -->``;
    a test fails when the README holds other text there, so the lists cannot drift from the code.
    """
    from evosparse.methods import METHODS

    def names(values: Any) -> str:
        return ", ".join(f"`{value}`" for value in values)

    choices = {
        "--method": names(sorted(METHODS)),
        "--dataset": names([*DATASETS, *FILE_DATASETS]),
        "--model": names(MODELS),
        "--distribution": names(DISTRIBUTIONS),
        "--init": names(INIT_SCHEMES),
        "--sparsify": names(PART_TYPES),
        "--optimizer": names(OPTIMIZERS),
        "--lr-schedule": names(LR_SCHEDULES),
        "--backend": names(BACKENDS),
        "--device": names(DEVICES),
        "--precision": names(PRECISIONS),
    }
    rows = [f"| `{name}` | {cls.summary.replace('|', chr(92) + '|')} |" for name, cls in sorted(METHODS.items())]
    return {
        "choices": "\n".join(f"- `{option}`: {values}" for option, values in choices.items()),
        "methods": "\n".join(["| name | what it does |", "|---|---|", *rows]),
    }


#: Option declarations shared by the commands: name -> (annotation, default). A command takes the
#: ones it names through :func:`with_options` and receives them in ``**options``.
OPTIONS: dict[str, tuple[Any, Any]] = {
    "config": (Annotated[Optional[Path], typer.Option(help="TOML file with any of the options below")], None),
    "method": (Annotated[Optional[str], typer.Option(help="sparse-training method (see `evosparse methods`)")], None),
    "methods": (
        Annotated[str, typer.Option(help="comma-separated methods to compare, e.g. dense,static,set")],
        inspect.Parameter.empty,
    ),
    "dataset": (
        Annotated[
            Optional[str],
            typer.Option(help=one_of([*DATASETS, *FILE_DATASETS])),
        ],
        None,
    ),
    "target": (Annotated[Optional[str], typer.Option(help="label column of a csv:PATH dataset")], None),
    "data_dir": (Annotated[Optional[str], typer.Option(help="dataset cache folder")], None),
    "model": (Annotated[Optional[str], typer.Option(help=one_of(MODELS))], None),
    "hidden": (Annotated[Optional[str], typer.Option(help="hidden sizes, e.g. 300,100")], None),
    "dropout": (Annotated[Optional[float], typer.Option(help="dropout between hidden layers")], None),
    "heads": (
        Annotated[
            Optional[int], typer.Option(help="attention heads per block of --model gpt (a divisor of its width)")
        ],
        None,
    ),
    "sparse_embeddings": (
        Annotated[
            Optional[bool],
            typer.Option(
                "--sparse-embeddings/--dense-embeddings",
                help="--model gpt: the token and position embeddings are sparse layers too",
            ),
        ],
        None,
    ),
    "context": (
        Annotated[
            Optional[int],
            typer.Option(help="characters per window of a text:PATH dataset (the gpt's positions, the lstm's unroll)"),
        ],
        None,
    ),
    "density": (
        Annotated[Optional[float], typer.Option(help="global fraction of active weights, in (0, 1]")],
        None,
    ),
    "epsilon": (Annotated[Optional[float], typer.Option(help="SET's ε (Erdős–Rényi density per layer)")], None),
    "distribution": (Annotated[Optional[str], typer.Option(help=one_of(DISTRIBUTIONS))], None),
    "init": (
        Annotated[
            Optional[str],
            typer.Option(help=f"{one_of(INIT_SCHEMES)}: re-draw the active weights, or keep the model's own"),
        ],
        None,
    ),
    "sparsify": (Annotated[Optional[str], typer.Option(help=f"which layers are sparse: {one_of(PART_TYPES)}")], None),
    "augment": (
        Annotated[Optional[bool], typer.Option("--augment/--no-augment", help="random crop + flip of images")],
        None,
    ),
    "train_fraction": (
        Annotated[
            Optional[float],
            typer.Option(help="share of the training set used, in (0, 1]: per class, drawn by the seed"),
        ],
        None,
    ),
    "val_fraction": (
        Annotated[
            Optional[float],
            typer.Option(
                help="share of the training set held out per class for model selection, in [0, 1) "
                "(a dataset's own validation split when it ships one; 0: none)"
            ),
        ],
        None,
    ),
    "train_fractions": (
        Annotated[
            Optional[str],
            typer.Option(help="compare at several training-set shares, e.g. 1.0,0.6,0.4 (a column each)"),
        ],
        None,
    ),
    "epochs": (Annotated[Optional[int], typer.Option(help="number of epochs")], None),
    "batch_size": (Annotated[Optional[int], typer.Option(help="mini-batch size")], None),
    "lr": (Annotated[Optional[float], typer.Option(help="learning rate")], None),
    "lr_schedule": (
        Annotated[
            Optional[str],
            typer.Option(help=f"{one_of(LR_SCHEDULES)}, stepped every batch"),
        ],
        None,
    ),
    "warmup_epochs": (
        Annotated[Optional[int], typer.Option(help="epochs of linear learning-rate warm-up")],
        None,
    ),
    "lr_milestones": (
        Annotated[Optional[str], typer.Option(help="step schedule: epochs after which the rate drops, e.g. 15,25")],
        None,
    ),
    "lr_gamma": (
        Annotated[Optional[float], typer.Option(help="step schedule: factor at each milestone")],
        None,
    ),
    "optimizer": (Annotated[Optional[str], typer.Option(help=one_of(OPTIMIZERS))], None),
    "momentum": (Annotated[Optional[float], typer.Option(help="SGD momentum")], None),
    "nesterov": (
        Annotated[Optional[bool], typer.Option("--nesterov/--no-nesterov", help="Nesterov momentum")],
        None,
    ),
    "weight_decay": (Annotated[Optional[float], typer.Option(help="L2 weight decay")], None),
    "seed": (Annotated[Optional[int], typer.Option(help="random seed (compare: the first of --seeds seeds)")], None),
    "seeds": (Annotated[Optional[int], typer.Option(help="number of consecutive seeds per method")], None),
    "target_acc": (
        Annotated[
            Optional[list[float]], typer.Option(help="report the first epoch reaching this accuracy (repeatable)")
        ],
        None,
    ),
    "backend": (Annotated[Optional[str], typer.Option(help=one_of(BACKENDS))], None),
    "device": (
        Annotated[Optional[str], typer.Option(help=f"{one_of(DEVICES)} (auto: CUDA when torch sees a GPU)")],
        None,
    ),
    "precision": (
        Annotated[Optional[str], typer.Option(help=f"{one_of(PRECISIONS)} (bf16: forward passes under autocast)")],
        None,
    ),
    "compile": (
        Annotated[
            Optional[bool],
            typer.Option("--compile/--no-compile", help="compile the training forward pass with torch.compile"),
        ],
        None,
    ),
    "param": (
        Annotated[
            Optional[list[str]],
            typer.Option(help="method parameter KEY=VALUE, or METHOD.KEY=VALUE for one method (repeatable)"),
        ],
        None,
    ),
    "out": (Annotated[Optional[str], typer.Option(help="output folder")], None),
    "fixed_topology_from": (
        Annotated[
            Optional[str],
            typer.Option(help="train static from scratch on the final masks of this finished run (AWS 5.1)"),
        ],
        None,
    ),
    "width_scale": (
        Annotated[
            Optional[str],
            typer.Option(help="scale the hidden widths: auto-wide, auto-small (dense baselines) or a factor"),
        ],
        None,
    ),
    "learned_from": (
        Annotated[
            Optional[str],
            typer.Option(help="learned-static's source method (default: the first evolving one listed)"),
        ],
        None,
    ),
    "baseline": (
        Annotated[
            Optional[str],
            typer.Option(help="the method every other is tested against (default: the first of --methods)"),
        ],
        None,
    ),
    "resume": (Annotated[bool, typer.Option(help="continue the run checkpointed in --out (it must hold one)")], False),
    "resume_if_present": (
        Annotated[bool, typer.Option(help="continue the run in --out if it holds a checkpoint, else start it")],
        False,
    ),
    "progress": (Annotated[bool, typer.Option(help="show a progress bar")], True),
    "tensorboard": (
        Annotated[
            Optional[Path],
            typer.Option(help="also log every epoch to TensorBoard in this folder (compare: a sub-folder per run)"),
        ],
        None,
    ),
    "wandb": (
        Annotated[
            bool,
            typer.Option(help="also log every epoch to Weights & Biases (project $WANDB_PROJECT, default evosparse)"),
        ],
        False,
    ),
}

#: The options that describe a training setup, shared by ``train`` and ``compare``.
SETUP_OPTIONS = (
    "config",
    "dataset",
    "target",
    "data_dir",
    "model",
    "hidden",
    "dropout",
    "heads",
    "sparse_embeddings",
    "context",
    "density",
    "epsilon",
    "distribution",
    "init",
    "sparsify",
    "augment",
    "train_fraction",
    "val_fraction",
    "epochs",
    "batch_size",
    "lr",
    "lr_schedule",
    "warmup_epochs",
    "lr_milestones",
    "lr_gamma",
    "optimizer",
    "momentum",
    "nesterov",
    "weight_decay",
    "seed",
    "backend",
    "device",
    "precision",
    "compile",
    "param",
    "out",
    "progress",
    "tensorboard",
    "wandb",
)

Command = TypeVar("Command", bound=Callable[..., None])


@functools.cache
def default_texts() -> dict[str, str]:
    """Each option's default in words, for ``--help`` (the configuration's defaults are ``None`` on the
    command line, so that a TOML file can set them; the real default is shown from here)."""
    from evosparse.data.download import DATA_DIR_ENV
    from evosparse.data.text import SEQ_LEN
    from evosparse.engine.config import DEFAULT_SEEDS, TrainConfig
    from evosparse.engine.lr_schedule import DEFAULT_GAMMA
    from evosparse.models import CONV_MODELS, DEFAULT_HIDDEN, TRAINING_DEFAULTS, default_distribution
    from evosparse.models.gpt import HEAD_WIDTH

    def words(value: Any) -> str:
        if isinstance(value, bool):
            return "on" if value else "off"
        return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)

    texts = {name: words(value) for name, value in TrainConfig().to_dict().items() if value is not None}
    for model, settings in TRAINING_DEFAULTS.items():
        for name, value in settings.items():
            texts[name] += f"; {model}: {words(value)}"
    conv = default_distribution(next(iter(CONV_MODELS)))
    texts |= {
        "density": f"{TrainConfig.DEFAULT_DENSITY} for methods that need a budget",
        "hidden": "; ".join(f"{model}: {words(sizes)}" for model, sizes in DEFAULT_HIDDEN.items()),
        "distribution": f"{default_distribution('mlp')}; {conv} for {', '.join(sorted(CONV_MODELS))}",
        "heads": f"width // {HEAD_WIDTH}, at least 1, lowered to a divisor of the width",
        "context": str(SEQ_LEN),
        "lr_gamma": str(DEFAULT_GAMMA),
        "data_dir": f"${DATA_DIR_ENV} or ~/.cache/evosparse",
        "out": "runs/METHOD-DATASET-seedS-TIME (train)",
        "seeds": str(DEFAULT_SEEDS),
    }
    return texts


def with_default(name: str, annotation: Any) -> Any:
    """``annotation`` (``Annotated[type, typer.Option(...)]``) with the option's default added to its help."""
    text = default_texts().get(name)
    if text is None:
        return annotation
    base, info = typing.get_args(annotation)
    documented = copy.copy(info)
    documented.help = f"{info.help} [default: {text}]"
    return Annotated[base, documented]


def with_options(*names: str) -> Callable[[Command], Command]:
    """Add the shared declarations ``OPTIONS[name]`` to a command's signature (after its own
    parameters); typer reads that signature and passes the values in the command's ``**options``."""

    def attach(command: Command) -> Command:
        own = [
            parameter
            for parameter in inspect.signature(command, eval_str=True).parameters.values()
            if parameter.kind is not inspect.Parameter.VAR_KEYWORD
        ]
        shared = [
            inspect.Parameter(
                name,
                inspect.Parameter.KEYWORD_ONLY,
                annotation=with_default(name, OPTIONS[name][0]),
                default=OPTIONS[name][1],
            )
            for name in names
        ]
        command.__signature__ = inspect.Signature([*own, *shared])  # type: ignore[attr-defined]
        return command

    return attach


def config_values(options: dict[str, Any]) -> dict[str, Any]:
    """The options that are training-configuration fields (the rest steer the command itself)."""
    from evosparse.engine.config import CONFIG_FIELDS

    return {name: value for name, value in options.items() if name in CONFIG_FIELDS}


def command_line(ctx: typer.Context) -> str:
    """The command line being run, as a shell would take it (``main`` passes its argv in ``ctx.obj``)."""
    argv = ctx.obj["argv"] if isinstance(ctx.obj, dict) and "argv" in ctx.obj else sys.argv[1:]
    return shlex.join(["evosparse", *argv])


@app.command()
@with_options(
    "method", *SETUP_OPTIONS, "resume", "resume_if_present", "target_acc", "fixed_topology_from", "width_scale"
)
def train(**options: Any) -> None:
    """Train one sparse network and write result.json, metrics.csv, curves.png and a checkpoint."""
    from evosparse.distributed import context_from_environment
    from evosparse.engine.compare import check_targets
    from evosparse.engine.config import build_config
    from evosparse.engine.loop import train as run_training
    from evosparse.engine.run_logging import RunLogging
    from evosparse.metrics import ACCURACY, epoch_reaching, result_metric, selection_split

    settings = build_config(options["config"], config_values(options), options["param"] or [])
    targets = check_targets(options["target_acc"]) if options["target_acc"] else ()
    result = run_training(
        settings,
        resume=options["resume"],
        resume_if_present=options["resume_if_present"],
        progress=options["progress"],
        logging=RunLogging(options["tensorboard"], options["wandb"]),
    )
    if not context_from_environment().is_leader:
        return
    typer.echo(layer_report(result), err=True)
    selected = (
        ""
        if result["selected_epoch"] is None
        else f", {result['test_acc_at_selected']:.4f} at val-selected epoch {result['selected_epoch']}"
    )
    bits = result.get("final_test_bits_per_char")
    typer.echo(
        f"{result['method']} on {result['dataset']}: test {result_metric(result).label} {result['final_test_acc']:.4f}"
        f"{'' if bits is None else f', {bits:.4f} bits per character'}{selected} "
        f"(best {result['best_test_acc']:.4f}, ARA {result['ara']:.4f}) at density {result['density_final']:.4g} "
        f"({result['params_active']:,}/{result['params_dense']:,} weights), {len(result['epochs'])} epochs "
        f"in {result['wall_time_s']:.1f} s -> {settings.out}"
    )
    if targets and result_metric(result) == ACCURACY:
        split = selection_split(result)
        curve = [epoch[f"{split}_acc"] for epoch in result["epochs"]]
        reached = [epoch_reaching(curve, target) for target in targets]
        cells = [f"{t:g}: {'never' if e is None else e}" for t, e in zip(targets, reached)]
        typer.echo(f"first epoch reaching ({split} accuracy) " + ", ".join(cells))


def layer_report(result: dict[str, Any]) -> str:
    """Each sparse layer's target and final density and active weights, the densities of the groups the
    model names (a transformer's blocks and heads), then the inference multiply-adds (printed on stderr by
    ``train``, whose stdout stays the contract's one-line summary)."""
    rows = [("layer", "shape", "target", "density", "active")] + [
        (
            layer["name"],
            "×".join(map(str, layer["shape"])),
            f"{layer['target_density']:.4f}",
            f"{layer['density']:.4f}",
            f"{layer['active']:,}",
        )
        for layer in result["layers"]
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
             for row in rows]  # fmt: skip
    groups = result.get("layer_groups") or []
    if groups:
        lines.append("groups: " + ", ".join(f"{g['name']} {g['density']:.4f}" for g in groups))
    macs = result["inference_macs"]
    lines.append(
        f"inference: {macs['sparse']:,} of {macs['dense']:,} dense multiply-adds per sample "
        f"({'n/a' if macs['relative'] is None else format(macs['relative'], '.4f')} of dense)"
        + (f"; not counted: {', '.join(macs['uncounted'])}" if macs["uncounted"] else "")
    )
    return "\n".join(line.rstrip() for line in lines)


def run_and_report(comparison: Any, progress: bool, fractions: str | None = None) -> None:
    """Run a comparison (once per training-set share in ``fractions`` when given) with one status line
    per run on stderr; print its table and files on stdout."""
    from evosparse.engine.compare import markdown_table, run_comparison
    from evosparse.engine.fractions import fraction_table, run_fraction_comparison

    console = Console(stderr=True)

    def report(line: str) -> None:
        console.print(line, highlight=False, soft_wrap=True)

    if fractions is None:
        typer.echo(markdown_table(run_comparison(comparison, progress=progress, report=report)), nl=False)
    else:
        summary = run_fraction_comparison(comparison, fractions, progress=progress, report=report)
        typer.echo(fraction_table(summary), nl=False)
    typer.echo(f"-> {comparison.out / 'summary.md'}, summary.json, curves.png, generalisation.png")


@app.command()
@with_options("methods", "seeds", "baseline", "target_acc", "train_fractions", "learned_from", *SETUP_OPTIONS)
def compare(ctx: typer.Context, **options: Any) -> None:
    """Train every method with the same data, model, budget and seeds; write summary.json, summary.md
    and curves.png. Runs already in --out are reused, so an interrupted comparison continues."""
    from evosparse.engine.compare import DEFAULT_TARGETS, plan_comparison
    from evosparse.engine.config import DEFAULT_SEEDS
    from evosparse.engine.run_logging import RunLogging

    comparison = plan_comparison(
        options["methods"],
        seed_count=options["seeds"] if options["seeds"] is not None else DEFAULT_SEEDS,
        config_file=options["config"],
        overrides=config_values(options),
        param_pairs=options["param"] or [],
        targets=options["target_acc"] or DEFAULT_TARGETS,
        command=command_line(ctx),
        learned_from=options["learned_from"],
        baseline=options["baseline"],
        logging=RunLogging(options["tensorboard"], options["wandb"]),
    )
    run_and_report(comparison, options["progress"], options["train_fractions"])


@app.command()
@with_options("epochs", "seeds", "param", "out", "device", "data_dir", "progress")
def reproduce(
    ctx: typer.Context,
    preset: Annotated[Optional[str], typer.Argument(help="preset name (see --list)")] = None,
    list_presets: Annotated[bool, typer.Option("--list", help="name every preset and whether it runs here")] = False,
    **options: Any,
) -> None:
    """Run a seed paper's setup as a comparison (--epochs/--seeds shorten it for a quick check; --param
    changes a method parameter, e.g. to select the switcher paper's own configuration)."""
    from evosparse.engine.presets import check_runnable, get_preset, preset_lines

    if list_presets:
        typer.echo("\n".join(preset_lines()))
        return
    if preset is None:
        raise UsageError("name a preset, or pass --list to see them")
    chosen = get_preset(preset)
    check_runnable(chosen, options["data_dir"])
    comparison = chosen.comparison(
        epochs=options["epochs"],
        seeds=options["seeds"],
        out=options["out"],
        overrides={"device": options["device"], "data_dir": options["data_dir"]},
        command=command_line(ctx),
        extra_params=tuple(options["param"] or ()),
    )
    run_and_report(comparison, options["progress"], chosen.fractions)


@app.command()
def analyze(run_dir: Annotated[Path, typer.Argument(help="folder of a finished or running `train` run")]) -> None:
    """Write graph metrics of the run's topology over its epochs (CSV + PNG) and degree plots."""
    from evosparse.analysis.report import analyze_run

    rows = analyze_run(run_dir)
    last = rows[-1]
    sampled = f", shortest paths from {last['sampled_sources']} sampled sources" if last["sampled_sources"] else ""
    typer.echo(
        f"{len({r['epoch'] for r in rows})} snapshots analysed; last epoch ({last['scope']}): algebraic connectivity "
        f"{last['algebraic_connectivity']:.4g}, degree Gini {last['degree_gini']:.4f}, clustering "
        f"{last['clustering']:.4f}, mean shortest path {last['avg_shortest_path']:.3f}{sampled} "
        f"-> {run_dir / 'analysis'}"
    )


@app.command()
def export(
    run_dir: Annotated[Path, typer.Argument(help="folder of a `train` run (its checkpoint is read)")],
    out: Annotated[Optional[Path], typer.Option(help="file to write (default RUN_DIR/model.safetensors)")] = None,
) -> None:
    """Write the run's trained sparse model as safetensors (CSR arrays + metadata) for inference."""
    from evosparse.engine.export_run import export_run

    report = export_run(run_dir, out)
    typer.echo(
        f"{report.sparse_layers} sparse layers -> {report.path}: {report.file_bytes:,} bytes, "
        f"{report.file_bytes / report.dense_bytes:.1%} of the {report.dense_bytes:,} bytes of dense float32 "
        "parameters; load it with evosparse.backends.export.load_exported"
    )


@app.command()
def methods() -> None:
    """List every registered method with its parameters and their defaults."""
    from evosparse.methods import DEFAULTS, METHODS

    table = Table("method", "parameter", "default", "meaning", show_lines=False)
    for name in sorted(METHODS):
        cls = METHODS[name]
        table.add_row(name, "", "", cls.summary, style="bold")
        for spec in cls.params:
            meaning = spec.help + (f" ({'|'.join(spec.choices)})" if spec.choices else "")
            if spec.paper is not None:
                meaning += f"; paper: {spec.paper!r}"
            table.add_row("", spec.name, repr(spec.default), meaning)
    console = Console()
    console.print(table)
    console.print(
        "paper: the method's paper's value where evosparse's default differs (measured better); "
        f"--param {DEFAULTS.name}=paper (or METHOD.{DEFAULTS.name}=paper in compare) selects them all."
    )


#: torch's switch that backs CPU tensors of 2 MiB and more with transparent huge pages. The command sets it
#: unless the user did: a wide layer's activations are fresh allocations every step, and touching them for the
#: first time costs 3.5x less with 2 MiB pages (80 MB: 30 → 8 ms); a step of bench/csr_memory.py's 10M-neuron
#: csr MLP took 2.24 s before and 1.67 s after. torch reads it once, at its first CPU allocation: importing this
#: module allocates nothing (tests/test_cli.py checks that the setting takes effect).
HUGE_PAGES_VARIABLE = "THP_MEM_ALLOC_ENABLE"


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app and map every expected failure to one line and an exit status.

    Sets :data:`HUGE_PAGES_VARIABLE` in the process environment (unless set), which child processes inherit.
    """
    os.environ.setdefault(HUGE_PAGES_VARIABLE, "1")
    command = typer.main.get_command(app)
    args = sys.argv[1:] if argv is None else argv
    try:
        command.main(args=args or ["--help"], prog_name="evosparse", standalone_mode=False, obj={"argv": args})
    except typer.Exit as done:
        return done.exit_code
    except typer.Abort:
        print("evosparse: aborted", file=sys.stderr)
        return 1
    except typer.TyperException as error:  # usage errors of the command-line parser
        message = error.format_message() if hasattr(error, "format_message") else str(error)
        print(f"evosparse: error: {message}", file=sys.stderr)
        return 2
    except EvosparseError as error:
        print(f"evosparse: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print(
            "evosparse: interrupted; rerun train with --resume-if-present, or the same compare/reproduce "
            "command, to continue from the last checkpoint written (if any)",
            file=sys.stderr,
        )
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
