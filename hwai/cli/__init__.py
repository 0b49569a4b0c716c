"""The `hwai` command line: a thin shell over the Python API, one module per command group (parse the options,
call the API, print). User mistakes (hwai.errors.UserError, bad options) print one line on stderr and exit 2."""
from __future__ import annotations

import sys

import typer

from hwai.cli import calibrate, compress, export, memory, nas, optimize, profile, report, shard, snn, targets, train
from hwai.cli.common import fail
from hwai.errors import UserError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  rich_markup_mode=None, help="hwai: hardware-aware AI for PyTorch models.")


@app.callback()
def _root() -> None:
    """hwai: hardware-aware AI for PyTorch models (profile, compress, co-design for a target)."""


for command in (train.train, profile.profile, targets.targets, calibrate.calibrate, report.report,
                compress.compress, optimize.optimize, optimize.worker, export.export, nas.nas):
    app.command()(command)
app.add_typer(memory.app, name="memory")
app.add_typer(shard.app, name="shard")
app.add_typer(snn.app, name="snn")


def main() -> None:
    """Entry point: run the app, turning user mistakes into one line on stderr and exit code 2."""
    try:
        code = app(standalone_mode=False)  # click returns typer.Exit's code here instead of exiting
        if isinstance(code, int) and code:
            sys.exit(code)
    except UserError as exc:
        fail(str(exc))
    except (KeyboardInterrupt, typer.Abort):
        print("hwai: interrupted", file=sys.stderr)
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.TyperException as exc:  # click's usage errors, vendored by typer
        if type(exc).__name__ == "NoArgsIsHelpError":
            app(["--help"], standalone_mode=True)
        fail(exc.format_message() if hasattr(exc, "format_message") else str(exc))
