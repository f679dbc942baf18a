"""What the command prints besides its data: progress bars and a live step/loss line on a
terminal, plain text (no colour, no bars, no carriage returns) anywhere else."""

import os
import sys
import time
from typing import TextIO

RESET = "\x1b[0m"
COLOURS = {"completed": "\x1b[32m", "failed": "\x1b[31m", "timeout": "\x1b[33m"}
COLOURS["cancelled"] = COLOURS["cancel_requested"] = "\x1b[35m"
CLEAR_LINE = "\r\x1b[K"


def is_terminal(stream: TextIO) -> bool:
    """A terminal that takes escapes: not a pipe or file, not TERM=dumb, not NO_COLOR."""
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):
        return False
    return tty and os.environ.get("TERM") != "dumb" and "NO_COLOR" not in os.environ


class Console:
    """Data to `out`; messages, the live line and bars to `err`, decorated only on a tty."""

    def __init__(self, out: TextIO | None = None, err: TextIO | None = None) -> None:
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.fancy = is_terminal(self.err)
        self._live = ""

    def status_word(self, status: str) -> str:
        colour = COLOURS.get(status) if self.fancy else None
        return f"{colour}{status}{RESET}" if colour else status

    def data(self, text: str) -> None:
        """Text for stdout (a log line, a table row); the live line is redrawn below it."""
        self._hide_live()
        self.out.write(text)
        self.out.flush()
        self._show_live()

    def message(self, text: str) -> None:
        self._hide_live()
        self.err.write(text + "\n")
        self.err.flush()
        self._show_live()

    def live(self, text: str) -> None:
        """A line that updates in place at the bottom of a terminal; nothing elsewhere."""
        if not self.fancy:
            return
        self._live = text
        self._show_live()

    def end_live(self) -> None:
        if self._live:
            self._hide_live()
            self._live = ""

    def _hide_live(self) -> None:
        if self.fancy and self._live:
            self.err.write(CLEAR_LINE)
            self.err.flush()

    def _show_live(self) -> None:
        if self.fancy and self._live:
            self.err.write(CLEAR_LINE + self._live)
            self.err.flush()

    def bar(self, label: str) -> "Bar":
        return Bar(self, label)


class Bar:
    """`label [#####.....]  45%  12.3/27.0 MB  25.1 MB/s`, redrawn at most ten times a second."""

    WIDTH = 24

    def __init__(self, console: Console, label: str) -> None:
        self.console = console
        self.label = label
        self.started = time.monotonic()
        self.drawn = 0.0

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if now - self.drawn < 0.1 and (not total or done < total):
            return
        self.drawn = now
        rate = done / max(now - self.started, 1e-6)
        if total:
            filled = int(self.WIDTH * min(done / total, 1.0))
            bar = "#" * filled + "." * (self.WIDTH - filled)
            text = (
                f"{self.label} [{bar}] {100 * done / total:5.1f}%  "
                f"{human(done)}/{human(total)}  {human(rate)}/s"
            )
        else:
            text = f"{self.label} {human(done)}  {human(rate)}/s"
        self.console.live(text)

    def done(self) -> None:
        self.console.end_live()


def human(size: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")
