"""Progress bars of the `omni` commands: one look and one rule for when they are drawn.

Every command that can take more than a few seconds draws one bar on stderr (stdout stays the
command's answer, e.g. a table to pipe on): over named stages (`StageBar`, as `omni train`
draws its families) or over chunks of customers (tqdm on the loop). A bar is drawn when stderr
is a terminal and the command was not given `--quiet`: a log file or CI output gets no carriage
returns. A stage bar that ends well ends full, at n/n (stages a run did not need count as done);
one that ends on an error stays where the error was. A long stage shows its elapsed time
ticking, so a slow step never looks like a hung one.
"""

from __future__ import annotations

import sys
import threading
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TextIO

import click
from tqdm.auto import tqdm

TICK_SECONDS = 1.0  # how often a long stage's elapsed time is redrawn


def progress_wanted(quiet: bool = False, stream: TextIO | None = None) -> bool:
    """Whether a command draws its bar: not asked to be quiet, and stderr is a terminal."""
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    return not quiet and callable(isatty) and bool(isatty())


class StageBar:
    """A bar over the named stages of one command; each `with bar.stage(name):` block moves it one
    step when the block ends well, and `close()` (or leaving `with StageBar(...)` without an
    error) fills it to the end.

    `enabled=False` draws nothing and costs nothing (the stage names are still checked). `file`:
    where to draw (default stderr).
    """

    def __init__(
        self,
        desc: str,
        stages: Sequence[str],
        enabled: bool = True,
        file: TextIO | None = None,
        tick_seconds: float = TICK_SECONDS,
    ) -> None:
        if not stages:
            raise ValueError("a stage bar needs at least one stage")
        self.stages = tuple(stages)
        self.done: list[str] = []
        self._n = 0  # counted here: a disabled tqdm counts nothing
        self.enabled = enabled
        self._file = sys.stderr if file is None else file
        self._bar = tqdm(
            total=len(self.stages),
            desc=desc,
            unit="stage",
            disable=not enabled,
            file=self._file,
            leave=True,
        )
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        if enabled and tick_seconds > 0:
            # the thread holds the bar weakly: a bar dropped without close() (a run that raised)
            # stops ticking once it is collected
            self._ticker = threading.Thread(
                target=_tick,
                args=(weakref.ref(self._bar), self._stop, tick_seconds),
                name=f"{desc}-progress",
                daemon=True,
            )
            self._ticker.start()

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        if name not in self.stages:
            raise ValueError(f"unknown stage {name!r}; the bar's stages are {', '.join(self.stages)}")
        self._bar.set_postfix_str(name, refresh=True)
        yield
        self.done.append(name)
        self._n += 1
        self._bar.update()

    def write(self, message: str, err: bool = True) -> None:
        """A line above the bar, on stderr (`err=False`: stdout); printing around a drawn bar
        would break it."""
        if self.enabled:
            self._bar.write(message, file=self._file if err else sys.stdout)
        else:
            click.echo(message, err=err)

    @property
    def n(self) -> int:
        return self._n

    @property
    def total(self) -> int:
        return len(self.stages)

    def close(self, complete: bool = True) -> None:
        """Stops the ticking; `complete`: the run ended well, so the bar is left full (stages it
        did not need, e.g. nothing to refresh, are over too)."""
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join()
            self._ticker = None
        if complete and self._n < self.total:
            self._bar.update(self.total - self._n)
            self._n = self.total
        self._bar.close()

    def __enter__(self) -> StageBar:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(complete=exc_type is None)

    def __del__(self) -> None:
        stop = getattr(self, "_stop", None)  # None: __init__ refused its arguments
        if stop is not None:
            stop.set()


def _tick(bar_ref: weakref.ref, stop: threading.Event, seconds: float) -> None:
    """Redraws a bar every `seconds` (tqdm redraws only on update(): a stage of minutes would
    freeze its elapsed time) until stopped or the bar is gone."""
    while not stop.wait(seconds):
        bar = bar_ref()
        if bar is None or bar.disable:
            return
        bar.refresh()
        del bar


def chunk_bar(iterable, desc: str, enabled: bool, unit: str = "chunk", total: int | None = None):
    """tqdm over a loop of chunks, drawn by the same rule as `StageBar`."""
    return tqdm(iterable, desc=desc, unit=unit, disable=not enabled, total=total, file=sys.stderr)
