"""The bench's table: issue 16's cases with the figure now, the target, and whether it is met.

Throughput figures are ratios of two contenders in the same round (interleaved, fresh
consumer groups), summarised as the median over the rounds with the spread (min-max).
"""

from __future__ import annotations

import operator
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def spread(values: Sequence[float], fmt: str = "{:.2f}") -> str:
    """``min-max`` of ``values`` in ``fmt``."""
    return f"{fmt.format(min(values))}-{fmt.format(max(values))}"


@dataclass
class Row:
    """One line of the table."""

    case: str
    now: str
    target: str
    met: bool | None  # None: not measured, or no target
    detail: str = ""

    @property
    def verdict(self) -> str:
        return {True: "yes", False: "**no**", None: "-"}[self.met]


@dataclass
class Table:
    """The rows in the order they were added."""

    rows: list[Row] = field(default_factory=list)

    def ratio(
        self,
        case: str,
        values: Sequence[float],
        target: float,
        *,
        at_most: bool = False,
        unit: str = "",
        detail: str = "",
    ) -> None:
        """A row for the median of ``values`` against ``target`` (at least, or at most)."""
        if not values:
            self.rows.append(Row(case, "not run", _target(target, at_most, unit), None, detail))
            return
        value = median(values)
        compare: Callable[[float, float], bool] = operator.le if at_most else operator.ge
        now = f"{value:.2f}{unit}"
        if len(values) > 1:
            now += f" ({spread(values)}{unit})"
        self.rows.append(
            Row(case, now, _target(target, at_most, unit), compare(value, target), detail)
        )

    def add(self, row: Row) -> None:
        self.rows.append(row)

    def markdown(self) -> list[str]:
        lines = ["| case | now: median (spread) | target | met | detail |", "|---|---|---|---|---|"]
        lines += [
            f"| {r.case} | {r.now} | {r.target} | {r.verdict} | {r.detail} |" for r in self.rows
        ]
        return lines


def _target(target: float, at_most: bool, unit: str) -> str:
    return f"{'<=' if at_most else '>='} {target:g}{unit}"
