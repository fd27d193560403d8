"""What the availability and device traces share: reading a per-client CSV and mapping
the trace's clients to learners."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

import numpy as np


def csv_rows(path: Path, required: tuple[str, ...], usage: str, what: str,
             error: type[Exception]) -> Iterator[tuple[int, dict[str, str]]]:
    """(line number, row) of a trace CSV; ``error`` names the file when it is missing or
    lacks a required column (``usage`` says which columns it takes)."""
    if not path.is_file():
        raise error(f"{path}: no such {what}")
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        missing = set(required) - set(reader.fieldnames or [])
        if missing:
            raise error(f"{path}: missing column(s) {', '.join(sorted(missing))} "
                        f"(need {usage})")
        yield from enumerate(reader, start=2)


def pick(n: int, m: int, mode: str, rng: np.random.Generator) -> np.ndarray:
    """The trace client (0..n-1, in sorted id order) of each of ``m`` learners: a seeded
    draw (with replacement when the trace has fewer clients), or by position, cycling."""
    if mode == "random":
        return rng.choice(n, size=m, replace=m > n)
    return np.arange(m) % n
