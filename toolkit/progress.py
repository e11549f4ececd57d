"""Progress on long work (`verify --runtimes`, `bench`, suite exports, `serve` start-up), shown on stderr.

Library functions take a `Progress` and tell it how much work there is (`begin`) and when a piece is done
(`advance`); the base class shows nothing, so Python callers and tests see no output. The CLI passes
`toolkit.cli.quiet.progress_for(as_json)`: click's progress bar on stderr when stderr is a terminal, and the silent base in
`--json` mode and in pipes (CI logs get no bar lines).
"""

from __future__ import annotations

from typing import Any, TextIO

import click


class Progress:
    """Shows nothing: the default of every library function that reports progress."""

    def begin(self, total: int, label: str) -> None:
        """`total` pieces of work called `label` start now (ends any earlier bar)."""

    def advance(self, item: str = "") -> None:
        """One piece is done; `item` says which."""

    def end(self) -> None:
        """The work is over (idempotent)."""


class TerminalProgress(Progress):
    """click's progress bar on a terminal stream."""

    def __init__(self, stream: TextIO):
        self.stream = stream
        self.bar: Any = None

    def begin(self, total: int, label: str) -> None:
        self.end()
        self.bar = click.progressbar(length=max(total, 1), label=label, file=self.stream, show_pos=True,
                                     show_eta=False, item_show_func=lambda item: item)
        self.bar.__enter__()

    def advance(self, item: str = "") -> None:
        if self.bar is not None:
            self.bar.update(1, item)

    def end(self) -> None:
        if self.bar is not None:
            bar, self.bar = self.bar, None
            bar.__exit__(None, None, None)
