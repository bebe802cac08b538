"""Helpers shared by the scripts in benchmarks/: timing, peak memory, tables, JSON.

They live in :mod:`moekit.bench` (so that ``moekit bench`` works from an installed package) and are
re-exported here so that a benchmark script imports them from one place.
"""

from __future__ import annotations

import json
from typing import Any

from moekit.bench import (
    cpu_peak_reason,
    environment,
    format_table,
    peak_mib,
    synchronize,
    time_ms,
)

__all__ = ["cpu_peak_reason", "environment", "format_table", "peak_mib", "synchronize",
           "time_ms", "write_json"]


def write_json(record: dict[str, Any], path: str) -> None:
    """Write ``record`` as indented JSON to ``path`` and say so."""
    with open(path, "w") as f:
        json.dump(record, f, indent=2)
    print(f"wrote {path}")
