"""Bad data in a pair file, reported before any training: every problem at once, each naming
the file, the row and the column, so a researcher fixes the file in one pass."""

from __future__ import annotations

MAX_LISTED = 30
"""Problems listed in one message; the rest are counted (a wrong column name would otherwise
print one line per row of the file)."""


class PairFileError(ValueError):
    """A pair file cannot become counterfactual pairs; ``problems`` lists why."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        shown = problems[:MAX_LISTED]
        more = len(problems) - len(shown)
        tail = f"\n  ... and {more} more problems" if more > 0 else ""
        super().__init__(f"pair file {source}:\n  - " + "\n  - ".join(shown) + tail)


class Problems:
    """Collects ``row N, column 'x': what is wrong`` lines for one file (rows counted from 1,
    as a reader counts the records of the file)."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.lines: list[str] = []
        self.table: str | None = None
        """The split of a file published with splits whose rows are being read."""

    def add(self, message: str, row: int | None = None, column: str | None = None) -> None:
        where = [f"split {self.table!r}"] if self.table is not None and row is not None else []
        if row is not None:
            where.append(f"row {row + 1}")
        if column is not None:
            where.append(f"column {column!r}")
        self.lines.append(f"{', '.join(where)}: {message}" if where else message)

    def raise_if_any(self) -> None:
        if self.lines:
            raise PairFileError(self.source, self.lines)
