"""The ``retune`` command line: parse options, call a workflow, render its results with Rich.

Heavy modules (torch, deepinv, the workflows) are imported inside the commands so that
``retune --help`` answers at once. Exit codes: 0 success, 1 training diverged, 2 bad input or
usage (one line, no traceback), 130 interrupted.
"""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer
from typer.core import TyperGroup

from . import __version__
from .commands import evaluate, gradients, models, restore, show, train
from .commands.common import console, print_error

# click's UsageError (typer vendors click in recent versions): found through typer's public BadParameter.
UsageError = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")


class OneLineErrors(TyperGroup):
    """The app's group: a usage error (a bad option value, a missing argument) is one ``error:`` line and
    exit code 2, like every other error; the help shown for no arguments is left as it is."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra) or 0
        except UsageError as e:
            code = e.exit_code
            if type(e).__name__ != "NoArgsIsHelpError":  # its help is printed already (as typer does)
                print_error(f"{e.format_message()} (see {e.ctx.command_path if e.ctx else 'retune'} --help)")
        if standalone_mode:
            sys.exit(code)
        return code


app = typer.Typer(
    cls=OneLineErrors,
    name="retune",
    help="Learn the hyperparameters of image-restoration algorithms at equilibrium (ReTune: restarted "
    "truncated unrolling). Train on a folder of clean images, restore degraded images, tabulate PSNR.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        console.print(f"retune {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool | None, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = None,
) -> None:
    """Learn restoration hyperparameters at equilibrium."""


app.command(epilog=train.EPILOG)(train.train)
app.command(epilog=restore.EPILOG)(restore.restore)
app.command("eval", epilog=evaluate.EPILOG)(evaluate.eval_)
app.command("compare-grads", epilog=gradients.EPILOG)(gradients.compare_grads)
app.command(epilog=show.EPILOG)(show.show)
app.command(epilog=models.EPILOG)(models.models)


def main() -> None:
    """The console script. OpenMP threads wait passively (set before torch is imported): spinning
    threads collapse throughput when the machine is shared with other busy processes."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
