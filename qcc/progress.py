"""Progress bars for long loops (calibration batches, sensitivity sweeps), over tqdm.

Why a helper: every long loop should show a bar to a person at a terminal and stay silent in logs,
pipes and tests, and the rule for that should live in one place. A bar shows when `enabled` is True,
never when it is False, and when it is None (the default) only if stderr is a terminal. Passes take
`enabled` from `ctx.config.get("progress")`, so a caller can force bars on or off.

    for batch in track(batches, "calibrate", enabled=ctx.config.get("progress")):
        ...
    with bar(len(tasks), "sensitivity") as b:
        ...
        b.update()
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from tqdm import tqdm

__all__ = ["shown", "track", "bar"]

T = TypeVar("T")


def shown(enabled: bool | None = None) -> bool:
    """Whether a bar is drawn: `enabled` when given, else whether stderr is a terminal."""
    if enabled is not None:
        return bool(enabled)
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty and isatty())


def _tqdm(total: int | None, desc: str, enabled: bool | None) -> tqdm:
    return tqdm(total=total, desc=desc, disable=not shown(enabled), file=sys.stderr, leave=False,
                dynamic_ncols=True, mininterval=0.2, unit="it")


def track(items: Iterable[T], desc: str, *, total: int | None = None, enabled: bool | None = None) -> Iterator[T]:
    """Iterate over `items`, advancing a bar by one per item; the bar closes when the loop ends or breaks."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with _tqdm(total, desc, enabled) as progress:
        for item in items:
            yield item
            progress.update(1)


@contextmanager
def bar(total: int, desc: str, *, enabled: bool | None = None) -> Iterator[tqdm]:
    """A bar of `total` steps; call `.update(n)` on it; closed on exit, also on an exception."""
    with _tqdm(total, desc, enabled) as progress:
        yield progress
