"""The ``vlmad`` command. Thin: parse options, call the library, print, exit.

Library errors (:class:`~vlmad.errors.VlmadError`) become one line on stderr and exit code 2; nothing here
imports torch or other heavy libraries at start-up, so ``vlmad --help`` answers at once.
"""

from __future__ import annotations

import sys

import typer

from vlmad import __version__
from vlmad.cli.coi import app as coi_app
from vlmad.cli.data import app as data_app
from vlmad.cli.demo import demo
from vlmad.cli.detect import app as detect_app
from vlmad.cli.eval import app as eval_app
from vlmad.cli.qa import app as qa_app
from vlmad.cli.train import app as train_app
from vlmad.cli.zeroshot import app as zeroshot_app
from vlmad.errors import VlmadError

app = typer.Typer(
    name="vlmad",
    help="Industrial image anomaly detection with vision-language models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(data_app, name="data")
app.add_typer(eval_app, name="eval")
app.add_typer(detect_app, name="detect")
app.add_typer(qa_app, name="qa")
app.add_typer(coi_app, name="coi")
app.add_typer(train_app, name="train")
app.add_typer(zeroshot_app, name="zeroshot")
app.command("demo")(demo)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"vlmad {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """vlmad: data, QA annotations, LoRA training, chain-of-image prompting, baselines, evaluation."""


def main() -> None:
    """Console-script entry point: run the app, turning vlmad errors into one-line messages."""
    try:
        app()
    except VlmadError as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
