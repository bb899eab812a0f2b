"""Where and how the benchmarks write their JSON results, and the shape of a result's row."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_result(path: Path, result: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")


def row(
    measure: str,
    meda: float,
    yardstick: float | None,
    unit: str,
    goal: str,
    met: bool,
    digits: int = 1,
    **details: Any,
) -> dict[str, Any]:
    """One measured row: meda's figure, its yardstick's (if any), their ratio and the goal."""
    ratio = None if yardstick is None else round(meda / yardstick, 3)
    return {
        "measure": measure,
        "meda": round(meda, digits),
        "yardstick": None if yardstick is None else round(yardstick, digits),
        "unit": unit,
        "ratio": ratio,
        "goal": goal,
        "met": met,
        **details,
    }


def print_rows(rows: list[dict[str, Any]]) -> None:
    """The rows as lines a person reads: figure, yardstick, ratio, goal and whether it is met."""
    for each in rows:
        yardstick = "" if each["yardstick"] is None else f" vs {each['yardstick']}"
        ratio = "" if each["ratio"] is None else f" ({each['ratio']:.2f}x)"
        print(
            f"  {each['measure']}: {each['meda']}{yardstick} {each['unit']}{ratio}"
            f"  goal {each['goal']}: {'met' if each['met'] else 'NOT met'}"
        )
