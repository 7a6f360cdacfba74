"""Tables that fit the terminal: the least important columns go first when it is narrow.

A column either never wraps (ids, states, numbers: cut or broken, they would mislead)
or wraps down to a width of its own (titles, label lists). A :class:`FittedTable` is laid out
when printed, for the console's width at that moment (``--watch`` follows a resized
terminal): if its columns cannot all fit whole, those with the highest ``drop`` rank
are left out, one at a time, until the rest do.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rich.console import Console, ConsoleOptions, JustifyMethod, RenderableType, RenderResult
from rich.measure import Measurement
from rich.table import Table

__all__ = ["Col", "FittedTable", "compact"]

_UNLIMITED = 100_000


@dataclass(frozen=True)
class Col:
    """A column: its header, and how it gives way at narrow widths.

    ``drop``: 0 keeps the column whatever the width; the highest rank is dropped
    first. ``wrap``: 0 never wraps the cells; else the narrowest the column may get.
    """

    header: str
    drop: int = 0
    wrap: int = 0
    justify: JustifyMethod = "left"


class FittedTable:
    """A rich table of ``rows`` under ``columns``, without the columns the width cannot
    hold whole (see the module doc); ``options`` go to :class:`rich.table.Table`."""

    def __init__(
        self,
        columns: Sequence[Col],
        rows: Sequence[Sequence[RenderableType]],
        **options: Any,
    ) -> None:
        if any(len(row) != len(columns) for row in rows):
            raise ValueError("every row needs one cell per column")
        self.columns = list(columns)
        self.rows = [list(row) for row in rows]
        self.options = options

    def shown(self, console: Console, width: int) -> list[Col]:
        """The columns that fit in ``width`` (all the undroppable ones at least)."""
        return [self.columns[index] for index in self._fitting(console, width)]

    def table(self, console: Console, width: int) -> Table:
        """The table laid out for ``width``."""
        return self._table(self._fitting(console, width))

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield self.table(console, options.max_width)

    def _fitting(self, console: Console, width: int) -> list[int]:
        indexes = list(range(len(self.columns)))
        while True:
            droppable = [index for index in indexes if self.columns[index].drop]
            if not droppable or self._minimum(console, indexes) <= width:
                return indexes
            indexes.remove(max(droppable, key=lambda index: self.columns[index].drop))

    def _table(self, indexes: list[int], widths: list[int] | None = None) -> Table:
        """The table of the columns at ``indexes``; with ``widths``, each fixed at its
        width."""
        table = Table(**self.options)
        for position, index in enumerate(indexes):
            column = self.columns[index]
            table.add_column(
                column.header,
                no_wrap=not column.wrap,
                justify=column.justify,
                width=None if widths is None else widths[position],
            )
        for row in self.rows:
            table.add_row(*(row[index] for index in indexes))
        return table

    def _minimum(self, console: Console, indexes: list[int]) -> int:
        """The narrowest the table of these columns gets with no cell cut: a column that
        does not wrap as wide as its widest cell, one that does at its ``wrap`` width
        (less if all its cells are narrower). Borders and padding are rich's own."""
        # Measured without a limit: rich caps a measure at the width it is given.
        options = console.options.update_width(_UNLIMITED)
        widths = []
        for index in indexes:
            column = self.columns[index]
            cells = [column.header, *(row[index] for row in self.rows)]
            widest = max(Measurement.get(console, options, cell).maximum for cell in cells)
            widths.append(min(widest, column.wrap) if column.wrap else widest)
        table = self._table(indexes, widths)
        return Measurement.get(console, options, table).minimum


def compact(number: int) -> str:
    """``12345`` as ``"12.3k"``, ``1000000`` as ``"1M"``; below 10,000 as is."""
    if abs(number) < 10_000:
        return str(number)
    for unit, size in (("k", 10**3), ("M", 10**6), ("G", 10**9)):
        text = f"{number / size:.3g}"
        if "e" not in text and abs(float(text)) < 1000:
            return text + unit
    return f"{number / 10**12:.3g}T"
