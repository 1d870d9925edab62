"""The ``evosparse`` command line (contract: ARCHITECTURE.md section 5).

Exit status: 0 success; 2 bad usage, configuration or data (one line on stderr, no traceback);
1 any other failure.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from evosparse.errors import EvosparseError

app = typer.Typer(
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="Dynamic sparse training for PyTorch: train, compare and inspect sparse networks.",
)


@app.command()
def train(
    config: Annotated[Optional[Path], typer.Option(help="TOML file with any of the options below")] = None,
    method: Annotated[Optional[str], typer.Option(help="sparse-training method (see `evosparse methods`)")] = None,
    dataset: Annotated[
        Optional[str], typer.Option(help="digits, mnist, fashion-mnist, cifar10, cifar100, isolet, or csv:PATH")
    ] = None,
    target: Annotated[Optional[str], typer.Option(help="label column of a csv:PATH dataset")] = None,
    data_dir: Annotated[Optional[str], typer.Option(help="dataset cache folder")] = None,
    model: Annotated[Optional[str], typer.Option(help="model architecture")] = None,
    hidden: Annotated[Optional[str], typer.Option(help="hidden sizes, e.g. 300,100")] = None,
    dropout: Annotated[Optional[float], typer.Option(help="dropout between hidden layers")] = None,
    density: Annotated[Optional[float], typer.Option(help="global fraction of active weights, in (0, 1]")] = None,
    epsilon: Annotated[Optional[float], typer.Option(help="SET's ε (Erdős–Rényi density per layer)")] = None,
    distribution: Annotated[Optional[str], typer.Option(help="uniform, erdos_renyi or erk")] = None,
    init: Annotated[Optional[str], typer.Option(help="sparse_kaiming or keep")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="number of epochs")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="mini-batch size")] = None,
    lr: Annotated[Optional[float], typer.Option(help="learning rate")] = None,
    optimizer: Annotated[Optional[str], typer.Option(help="sgd or adam")] = None,
    momentum: Annotated[Optional[float], typer.Option(help="SGD momentum")] = None,
    nesterov: Annotated[Optional[bool], typer.Option("--nesterov/--no-nesterov", help="Nesterov momentum")] = None,
    weight_decay: Annotated[Optional[float], typer.Option(help="L2 weight decay")] = None,
    seed: Annotated[Optional[int], typer.Option(help="random seed")] = None,
    backend: Annotated[Optional[str], typer.Option(help="masked or csr")] = None,
    device: Annotated[Optional[str], typer.Option(help="cpu or cuda")] = None,
    param: Annotated[Optional[list[str]], typer.Option(help="method parameter KEY=VALUE (repeatable)")] = None,
    out: Annotated[Optional[str], typer.Option(help="output folder")] = None,
    resume: Annotated[bool, typer.Option(help="continue the run checkpointed in --out")] = False,
    progress: Annotated[bool, typer.Option(help="show a progress bar")] = True,
) -> None:
    """Train one sparse network and write result.json, metrics.csv, curves.png and a checkpoint."""
    from evosparse.engine.config import build_config
    from evosparse.engine.loop import train as run_training

    overrides = {
        "method": method,
        "dataset": dataset,
        "target": target,
        "data_dir": data_dir,
        "model": model,
        "hidden": hidden,
        "dropout": dropout,
        "density": density,
        "epsilon": epsilon,
        "distribution": distribution,
        "init": init,
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "optimizer": optimizer,
        "momentum": momentum,
        "nesterov": nesterov,
        "weight_decay": weight_decay,
        "seed": seed,
        "backend": backend,
        "device": device,
        "out": out,
    }
    settings = build_config(config, overrides, param or [])
    result = run_training(settings, resume=resume, progress=progress)
    typer.echo(
        f"{result['method']} on {result['dataset']}: test accuracy {result['final_test_acc']:.4f} "
        f"(best {result['best_test_acc']:.4f}, ARA {result['ara']:.4f}) at density {result['density_final']:.4f} "
        f"({result['params_active']:,}/{result['params_dense']:,} weights), {len(result['epochs'])} epochs "
        f"in {result['wall_time_s']:.1f} s -> {settings.out}"
    )


@app.command()
def methods() -> None:
    """List every registered method with its parameters and their defaults."""
    from evosparse.methods import METHODS

    table = Table("method", "parameter", "default", "meaning", show_lines=False)
    for name in sorted(METHODS):
        cls = METHODS[name]
        table.add_row(name, "", "", cls.summary, style="bold")
        for spec in cls.params:
            meaning = spec.help + (f" ({'|'.join(spec.choices)})" if spec.choices else "")
            table.add_row("", spec.name, repr(spec.default), meaning)
    Console().print(table)


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app and map every expected failure to one line and an exit status."""
    command = typer.main.get_command(app)
    args = sys.argv[1:] if argv is None else argv
    try:
        command.main(args=args or ["--help"], prog_name="evosparse", standalone_mode=False)
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
        print("evosparse: interrupted; rerun with --resume to continue from the last checkpoint", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
