"""What the demo prints: numbered stages, aligned facts, step lines and tables."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import TextIO

_INDENT = "    "


class Console:
    """Plain-text output, flushed line by line so a pipe or a test sees it as it happens."""

    def __init__(self, stream: TextIO | None = None, *, stages: int = 0) -> None:
        self.stream = stream or sys.stdout
        self.stages = stages
        self._stage = 0
        self._started = time.monotonic()

    def line(self, text: str = "") -> None:
        self.stream.write(text + "\n")
        self.stream.flush()

    def title(self, text: str) -> None:
        self.line(text)
        self.line("=" * len(text))

    def stage(self, text: str) -> None:
        self._stage += 1
        elapsed = time.monotonic() - self._started
        self.line()
        self.line(f"[{self._stage}/{self.stages}] {text}  (t+{elapsed:.1f}s)")

    def info(self, text: str) -> None:
        for part in text.splitlines() or [""]:
            self.line(f"{_INDENT}{part}" if part else "")

    def facts(self, rows: Sequence[tuple[str, str]]) -> None:
        """``label   value`` lines, labels padded to one column."""
        width = max((len(label) for label, _ in rows), default=0)
        for label, value in rows:
            self.info(f"{label.ljust(width)}  {value}")

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
        widths = [len(h) for h in headers]
        for row in rows:
            widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]

        def fmt(cells: Sequence[str]) -> str:
            return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

        self.info(fmt(headers))
        self.info(fmt(["-" * w for w in widths]))
        for row in rows:
            self.info(fmt(row))

    def elapsed(self) -> float:
        return time.monotonic() - self._started
