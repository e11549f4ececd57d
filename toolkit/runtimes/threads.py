"""The intra-op thread bound every runtime is given: more threads than `max_threads()` (2000 turned 0.3 s
into 20 s) are refused with the bound stated."""

from __future__ import annotations

import os
from collections.abc import Sequence

from toolkit.errors import OptionError


def max_threads() -> int:
    """The most intra-op threads a runtime is given: 4 per core (more only contend for the cores)."""
    return 4 * (os.cpu_count() or 1)


def check_threads(threads: Sequence[int], option: str = "--threads") -> tuple[int, ...]:
    """Thread counts within 1..max_threads(); an `OptionError` stating the bound otherwise."""
    bound = max_threads()
    wrong = [n for n in threads if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= bound]
    if wrong:
        raise OptionError(f"Expected {option} between 1 and {bound} (4 per core on this machine's "
                          f"{os.cpu_count() or 1}). Received: {wrong[0]!r}")
    return tuple(threads)
