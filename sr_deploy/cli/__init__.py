"""The `sr-deploy` command line: a click group, each command a thin wrapper over the library.

Errors: one line on stderr (`error: ...`; click's own usage errors too), exit code 2 for bad usage
or input, 1 for a runtime failure, 130 for Ctrl-C. `--debug` (before the command) shows the
traceback instead.

The group and its error handling live here; each command area is a module of its own
(`models`: info, sample, cache; `evaluate`: eval; `export`: export, build-engine; `upscale`;
`benchmark`), sharing option declarations through `options`. The command modules do not know
the group: this module adds their commands to it. Heavy imports stay inside the command
functions, so that `sr-deploy --help` starts quickly.
"""

from __future__ import annotations

import os
import traceback
import warnings

import click

from .. import __version__
from ..errors import SRDeployError
from ..util.log import DEBUG_ENV
from ..util.text import first_line, shown
from . import benchmark, evaluate, export, models, upscale

__all__ = ["cli", "main"]


# click >= 8.2 raises this (a UsageError) for a bare group, to print its help; older click exits.
_HELP_FOR_NO_ARGS = getattr(click.exceptions, "NoArgsIsHelpError", ())


def _usage_error(exc: click.UsageError, command_path: str) -> click.exceptions.Exit:
    """click's own usage errors (an option value of the wrong type, a missing argument, an
    unknown option or command) as the house's one line, with where to read more; exit 2.
    `command_path`: the command to point at when click does not say which failed."""
    where = exc.ctx.command_path if exc.ctx is not None else command_path
    click.echo(f"error: {' '.join(exc.format_message().split())} (see '{where} --help')", err=True)
    return click.exceptions.Exit(exc.exit_code)


class _Group(click.Group):
    """Maps every error raised by a command to one line on stderr and an exit code, so that
    the console script and click's CliRunner behave the same."""

    def make_context(self, info_name, args, parent=None, **extra):  # the group's own options
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except _HELP_FOR_NO_ARGS:
            raise  # `sr-deploy` alone prints the help
        except click.UsageError as exc:
            raise _usage_error(exc, info_name or "sr-deploy") from None

    def invoke(self, ctx: click.Context):
        debug = bool(ctx.params.get("debug"))
        before = os.environ.get(DEBUG_ENV)
        if debug:  # per-file errors are caught deep in the jobs (and Ray workers): they read this
            os.environ[DEBUG_ENV] = "1"
        try:
            return super().invoke(ctx)
        except _HELP_FOR_NO_ARGS:
            raise
        except click.UsageError as exc:
            sub = ctx.invoked_subcommand  # set before the subcommand parses its arguments
            raise _usage_error(exc, f"{ctx.command_path} {sub}" if sub else ctx.command_path) from None
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except KeyboardInterrupt:
            click.echo("error: interrupted", err=True)
            ctx.exit(130)
        except SRDeployError as exc:
            if debug:
                traceback.print_exc()
            click.echo(f"error: {shown(exc)}", err=True)  # a newline in a file name stays on the line
            ctx.exit(exc.exit_code)
        except Exception as exc:  # unexpected: still one line unless --debug
            if debug:
                traceback.print_exc()
            first = first_line(exc, limit=10_000) if str(exc).strip() else ""
            click.echo(f"error: {type(exc).__name__}: {first} (run with --debug for the traceback)", err=True)
            ctx.exit(1)
        finally:
            if before is None:
                os.environ.pop(DEBUG_ENV, None)
            else:
                os.environ[DEBUG_ENV] = before


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show the full traceback on errors.")
@click.version_option(__version__, prog_name="sr-deploy")
def cli(debug: bool) -> None:
    """Super-resolution from training to fast deployment: PyTorch, ONNX Runtime, TensorRT."""
    # OpenCV's own log ("[ERROR:0@3.4] global grfmt_tiff.cpp ...") repeats in several lines what the
    # command says in one (`error: FILE: cause`); --debug keeps it. Set before cv2 is imported (the
    # commands import it lazily), so Ray workers started from here inherit it too.
    # Pillow's warnings while it reads a header ("Corrupt EXIF data") are noise of the same kind.
    if not debug:
        os.environ.setdefault("OPENCV_LOG_LEVEL", "SILENT")
        warnings.filterwarnings("ignore", module=r"PIL\.")


cli.add_command(models.info)
cli.add_command(models.sample)
cli.add_command(evaluate.eval_)
cli.add_command(export.export)
cli.add_command(export.build_engine)
cli.add_command(upscale.upscale)
cli.add_command(benchmark.benchmark)
cli.add_command(models.cache)


def main(argv: list[str] | None = None) -> None:
    """Console entry point (`sr-deploy`)."""
    cli.main(args=argv, prog_name="sr-deploy")
