"""Pieces the commands of `toolkit.cli` and `toolkit.cli.export` share: escaped output, option parsing
helpers, and the option groups two commands take (tolerances; the `--max-*` resource limits, which
`export` and `verify` both need because both load `.keras` files).

Nothing here imports TensorFlow: `--help`, `run` and `inspect` import this module.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click

from toolkit.cli.quiet import echo_err
from toolkit.errors import InputError, OptionError
from toolkit.options import (
    MAX_ACTIVATION_ELEMENTS,
    MAX_MEMBER_BYTES,
    MAX_PARAMS,
    MAX_TIMESTEPS,
    MAX_TOTAL_BYTES,
    RUN_TIMEOUT,
    ResourceLimits,
)

VARIABLE = "none"


def one_line(text: str) -> str:
    from toolkit.text import safe_text

    return safe_text(" ".join(text.split()), limit=2000)


def echo(text: str = "", err: bool = False) -> None:
    """click.echo with names and metadata from untrusted files escaped (lines and tabs kept)."""
    from toolkit.text import safe_text

    line = safe_text(text, limit=None, keep="\n\t")
    if err:
        echo_err(line)  # the tool's own stderr lines reach the terminal also while stderr is quiet
    else:
        click.echo(line)


def emit_json(payload: Any) -> None:
    echo(json.dumps(payload, indent=2))


@contextmanager
def option_values() -> Iterator[None]:
    """An InputError while reading option values is a malformed option: exit 2, like click's own."""
    try:
        yield
    except OptionError:
        raise
    except InputError as exc:
        raise OptionError(str(exc)) from None


def _verbose() -> bool:
    context = click.get_current_context(silent=True)
    return bool(context and context.find_root().params.get("verbose"))


def quiet_tensorflow() -> None:
    # The CLI is an application edge, so it may choose TensorFlow's C++ log level (library code never
    # sets environment variables). Must happen before TensorFlow is first imported. This alone is not
    # enough: absl prints "WARNING: All log messages before absl::InitializeLog() ..." and oneDNN's
    # "I0000 ... port.cc" line whatever the level (measured, TensorFlow 2.21), hence `quiet_stderr`.
    if not _verbose():
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


class Timesteps(click.ParamType):
    name = "N|none"

    def convert(self, value: Any, param: Any, ctx: Any) -> int | str:
        # Returns VARIABLE rather than None for 'none': None already means "option not given".
        if isinstance(value, int) or value == VARIABLE:
            return value
        if str(value).lower() in ("none", "variable"):
            return VARIABLE
        try:
            steps = int(value)
        except ValueError:
            self.fail(f"Expected a number of time steps >= 1 or 'none'. Received: {value!r}", param, ctx)
        if steps < 1:
            self.fail(f"Expected a number of time steps >= 1 or 'none'. Received: {value!r}", param, ctx)
        return steps


def _apply(options: list[Any], func: Any) -> Any:
    for option in reversed(options):
        func = option(func)
    return func


_tolerance_options = [
    click.option("--atol", multiple=True, metavar="[OUTPUT:]VALUE",
                 help="Absolute tolerance (default 1e-6); OUTPUT:VALUE for one output. Repeatable."),
    click.option("--rtol", multiple=True, metavar="[OUTPUT:]VALUE",
                 help="Relative tolerance (default 1e-5); OUTPUT:VALUE for one output. Repeatable."),
]


def json_option(what: str = "the report") -> Any:
    """`--json`, declared once for every command; `what` says what the JSON holds."""
    return click.option("--json", "as_json", is_flag=True, help=f"Print {what} as JSON (machine-readable, for CI and scripts).")


def timeout_option(what: str = "a run") -> Any:
    """`--timeout`, declared once: seconds one run may take, the runner contract's default (`RUN_TIMEOUT`)."""
    return click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=RUN_TIMEOUT,
                        show_default=True, callback=_finite_timeout,
                        help=f"Seconds {what} may take; a longer one is stopped (a crafted Loop can run for ever).")


def _finite_timeout(ctx: click.Context, param: click.Parameter, value: float) -> float:
    # click's FloatRange lets 'nan' and 'inf' through: a run with no deadline at all, unasked.
    if not math.isfinite(value):
        raise OptionError(f"Expected --timeout as a finite number of seconds > 0. Received: {value}")
    return value


def seed_option(meaning: str, what: str, default: int | None) -> Any:
    """`--weights-seed` (export: the built model's weights) or `--input-seed` (verify: the random inputs), each
    also spelled `--seed`, the one spelling both commands had."""
    return click.option(f"--{meaning}-seed", "--seed", "seed", type=click.IntRange(min=0), default=default,
                        show_default=default is not None, help=f"Seed of {what}.")


class RuntimesOption(click.Option):
    """`--runtimes`/`--target`, whose help lists the registered runtimes (`toolkit.runtimes.registry`): read
    only when help is shown, since importing the registry imports ONNX for every command."""

    def __init__(self, *args: Any, help_before: str = "", help_after: str = "", timed: bool = False,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.help_before, self.help_after, self.timed = help_before, help_after, timed

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        from toolkit.runtimes.registry import RUNTIMES, runtimes_help

        listed = runtimes_help([n for n, r in RUNTIMES.items() if r.timed] if self.timed else None)
        self.help = f"{self.help_before}{listed}{self.help_after}"
        return super().get_help_record(ctx)


def runtimes_option(*names: str, before: str, after: str = "", **kwargs: Any) -> Any:
    """A `--runtimes`-like option whose help is generated from the registry (see `RuntimesOption`)."""
    return click.option(*names, cls=RuntimesOption, metavar="LIST", help_before=before, help_after=after, **kwargs)


def tolerance_options(func: Any) -> Any:
    return _apply(_tolerance_options, func)


_limit_options = [
    click.option("--max-params", type=click.IntRange(min=1), help=f"Parameters a model may declare (default {MAX_PARAMS})."),
    click.option("--max-timesteps", type=click.IntRange(min=1),
                 help=f"A fixed time axis, in steps (default {MAX_TIMESTEPS})."),
    click.option("--max-activation", type=click.IntRange(min=1),
                 help=f"Values per sample in one layer's input or output (default {MAX_ACTIVATION_ELEMENTS})."),
    click.option("--max-member-bytes", type=click.IntRange(min=1),
                 help=f"Uncompressed bytes of one member of a .keras archive (default {MAX_MEMBER_BYTES}); all "
                      "members together may hold twice this."),
]


def limit_options(func: Any) -> Any:
    """The `--max-*` flags of every command that loads a `.keras` file (the refusals name them)."""
    return _apply(_limit_options, func)


def limits_from(max_params: int | None, max_timesteps: int | None, max_activation: int | None,
                max_member_bytes: int | None) -> ResourceLimits:
    """The default limits, raised (or lowered) by the flags given; all members may hold twice one member."""
    total = max(MAX_TOTAL_BYTES, 2 * max_member_bytes) if max_member_bytes else None
    return ResourceLimits().raised(max_params=max_params, max_timesteps=max_timesteps,
                                   max_activation_elements=max_activation, max_member_bytes=max_member_bytes,
                                   max_total_bytes=total)


def html_path(value: Any) -> Any:
    """`--html PATH`: a page ending in .html or .htm, checked before any work (a malformed option, exit 2)."""
    from pathlib import Path

    if value is not None and Path(value).suffix.lower() not in (".html", ".htm"):
        raise OptionError(f"Expected --html PATH ending in .html. Received: {str(value)!r}")
    return value


def command_line() -> str:
    """The command line that is running, as a shell would take it back (the HTML pages show it)."""
    context = click.get_current_context(silent=True)
    root = context.find_root().command if context else None
    return getattr(root, "command_line", "") or "lstm-onnx"
