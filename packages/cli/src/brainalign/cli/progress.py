"""Progress of long steps: rich bars with count, rate, elapsed time and ETA on stderr.

Library functions take ``progress: Callable[[str], None] | None`` and call it with one message
per step, so any callable (``print``, a logger method) works. Where a step has a count they
call :func:`tick`, which passes ``(step, done, total)`` on to a :class:`Progress` (a callable
with an ``advance`` method, such as :class:`Bars`) and falls back to calling a plain callable
with the message. The command line hands the library a :class:`Bars`.

Bars are drawn only when stderr is a terminal; ``BRAINALIGN_PROGRESS=1`` forces them on (under
``tee``, in tests) and ``BRAINALIGN_PROGRESS=0`` turns them off. Without bars, messages are
logged one per line.
"""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from rich.console import Console

ENV = "BRAINALIGN_PROGRESS"


@runtime_checkable
class Progress(Protocol):
    """A progress sink: called with a message per step, told counts with ``advance``."""

    def __call__(self, message: str, /) -> None: ...

    def advance(
        self, step: str, done: int, total: int | None = None, *, unit: str = "it", message: str | None = None
    ) -> None: ...


def tick(
    progress,
    step: str,
    done: int,
    total: int | None = None,
    *,
    unit: str = "it",
    message: str | None = None,
) -> None:
    """Report that ``done`` of ``total`` ``unit``\\ s of ``step`` are complete.

    A :class:`Progress` gets the counts and ``message`` (what is being done now); a plain
    callable gets only ``message``, when there is one; ``None`` gets nothing.
    """
    if progress is None:
        return
    if isinstance(progress, Progress):
        progress.advance(step, done, total, unit=unit, message=message)
    elif message is not None:
        progress(message)


def forced() -> bool | None:
    """``True``/``False`` when ``BRAINALIGN_PROGRESS`` forces bars on/off, else ``None``."""
    v = os.environ.get(ENV, "").strip().lower()
    if v in ("1", "true", "yes", "on", "force"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    return None


def bars_enabled(console: Console | None = None) -> bool:
    """Whether to draw bars: as ``BRAINALIGN_PROGRESS`` says, else when stderr is a terminal."""
    f = forced()
    if f is not None:
        return f
    if console is None:
        from .output import err_console as console
    return console.is_terminal and not console.is_dumb_terminal


def _clock(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "-:--:--"
    s = round(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _columns():
    from rich.progress import BarColumn, ProgressColumn, SpinnerColumn, TextColumn
    from rich.table import Column
    from rich.text import Text

    def elapsed(task) -> float:
        return task.finished_time if task.finished_time is not None else (task.elapsed or 0.0)

    class Count(ProgressColumn):
        def render(self, task):
            total = "?" if task.total is None else f"{int(task.total):,}"
            return Text(f"{int(task.completed):,}/{total}", style="progress.download")

    class Rate(ProgressColumn):
        """Mean rate since the step started, as tqdm shows it: units/s, or s/unit when slower."""

        def render(self, task):
            unit, t = task.fields.get("unit", "it"), elapsed(task)
            if not task.completed or not t:
                return Text(f"? {unit}/s", style="progress.data.speed")
            rate = task.completed / t
            text = f"{rate:,.3g} {unit}/s" if rate >= 1 else f"{1 / rate:,.3g} s/{unit}"
            return Text(text, style="progress.data.speed")

    class Elapsed(ProgressColumn):
        def render(self, task):
            return Text(_clock(elapsed(task)), style="progress.elapsed")

    class Eta(ProgressColumn):
        def render(self, task):
            if task.finished:
                return Text("done", style="progress.remaining")
            t, left = elapsed(task), None
            if task.total is not None and task.completed and t:
                left = (task.total - task.completed) * t / task.completed
            return Text(f"eta {_clock(left)}", style="progress.remaining")

    return (
        SpinnerColumn(finished_text="[green]✓[/green]"),
        TextColumn("[bold]{task.description}", table_column=Column(no_wrap=True)),
        BarColumn(bar_width=20),
        Count(),
        Rate(),
        Elapsed(),
        Eta(),
    )


def _display(console: Console, title: str):
    """A rich Progress that draws a status line (spinner, title, latest message) above its bars."""
    from rich.progress import Progress as RichProgress
    from rich.spinner import Spinner
    from rich.table import Table
    from rich.text import Text

    spinner = Spinner("dots", style="progress.spinner")

    class Display(RichProgress):
        message = ""
        show_status = True

        def get_renderables(self):
            if self.show_status:
                line = Table.grid(padding=(0, 1), expand=True)
                line.add_column(no_wrap=True)
                line.add_column(no_wrap=True)
                line.add_column(no_wrap=True, overflow="ellipsis", ratio=1)
                line.add_row(spinner, Text(title, style="bold"), Text(self.message, style="dim"))
                yield line
            if self.tasks:
                yield self.make_tasks_table(self.tasks)

    return Display(*_columns(), console=console, redirect_stdout=False)  # stdout carries results


class Bars:
    """A :class:`Progress` for the command line: a status line with the latest message above one
    bar per counted step, drawn on stderr while the ``with`` block runs.

    Messages (``bars("...")``) are logged one per line above the bars. Counted steps
    (``bars.advance(step, done, total)``) get a bar with count, rate, elapsed time and ETA;
    their messages go to the status line. When bars are off (stderr is not a terminal and
    ``BRAINALIGN_PROGRESS`` does not force them) every message is logged, counts are dropped.
    """

    def __init__(self, title: str, *, console: Console | None = None, enabled: bool | None = None):
        from rich.console import Console

        if console is None:
            from .output import err_console as console
        self.enabled = bars_enabled(console) if enabled is None else enabled
        if self.enabled and not console.is_terminal:  # forced: draw as on a terminal
            console = Console(stderr=console.stderr, force_terminal=True, log_path=False)
        self.console = console
        self.title = title
        self._display = None
        self._tasks: dict[str, tuple[int, int]] = {}  # step -> (rich task id, units done)

    def __enter__(self) -> Bars:
        if self.enabled:
            self._display = _display(self.console, self.title)
            self._display.start()
        return self

    def __exit__(self, *exc) -> bool:
        if self._display is not None:
            self._display.show_status = False  # the finished bars stay on screen, the status goes
            if not self._tasks:
                self._display.live.transient = True  # nothing was counted: leave no empty frame
            self._display.stop()
            self._display = None
        return False

    def __call__(self, message: str, /) -> None:
        self.console.log(message, markup=False, highlight=False)
        self.update(message)

    def update(self, message: str) -> None:
        """Show ``message`` on the status line without logging it."""
        if self._display is not None:
            self._display.message = message

    def advance(
        self, step: str, done: int, total: int | None = None, *, unit: str = "it", message: str | None = None
    ) -> None:
        d = self._display
        if d is None:
            if message is not None:
                self.console.log(message, markup=False, highlight=False)
            return
        task, before = self._tasks.get(step, (None, 0))
        if task is None or done < before:  # a new step, or it starts over (next subject, model, ...)
            if task is not None:
                d.remove_task(task)
            task = d.add_task(step, total=total, completed=done, unit=unit)
        self._tasks[step] = (task, done)
        d.update(task, completed=done, total=total)
        if message is not None:
            self.update(message)
