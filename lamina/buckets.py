"""Time buckets (minute, hour, day, or N of them) and the ingest epoch, with their laws.

A bucket is identified by its start, in whole seconds since the Unix epoch, UTC. Buckets are
aligned to the epoch (a 15-minute bucket starts at :00, :15, :30, :45; a day at 00:00 UTC).
Laws (tested with hypothesis): ``bucket_of(start) == start``;
``start <= t < start + seconds`` for ``start = bucket_of(t)``; a coarser bucket that is a
multiple of a finer one contains each finer bucket whole.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import ClassVar

from lamina.errors import ConfigError

_UNIT_SECONDS = {"minute": 60, "hour": 3600, "day": 86400}
_ALIASES = {
    "m": "minute",
    "min": "minute",
    "minute": "minute",
    "minutes": "minute",
    "h": "hour",
    "hour": "hour",
    "hours": "hour",
    "d": "day",
    "day": "day",
    "days": "day",
}
_PATTERN = re.compile(r"^\s*(\d*)\s*([a-z]+)\s*$")


@dataclass(frozen=True, order=True)
class Bucket:
    """A bucket width: ``n`` minutes, hours or days."""

    seconds: int
    label: str

    UNITS: ClassVar[tuple[str, ...]] = tuple(_UNIT_SECONDS)

    @classmethod
    def parse(cls, text: str) -> Bucket:
        """``"hour"``, ``"1h"``, ``"15m"``, ``"15 minutes"``, ``"2d"`` -> a Bucket.

        Raises :class:`ConfigError` saying which forms are accepted.
        """
        match = _PATTERN.match(str(text).lower())
        unit = _ALIASES.get(match.group(2)) if match else None
        n = int(match.group(1) or 1) if match else 0
        if unit is None or n < 1:
            raise ConfigError(
                f"bad time bucket {text!r}",
                hint="use minute, hour or day, optionally with a count: 15m, 2h, 1d",
            )
        label = unit if n == 1 else f"{n}{unit[0]}"
        return cls(n * _UNIT_SECONDS[unit], label)

    def bucket_of(self, epoch_s: float) -> int:
        """Start (epoch seconds) of the bucket holding instant ``epoch_s`` (seconds, UTC).

        Instants are taken at millisecond precision (floored), as Spark does for timestamps.
        """
        return math.floor(epoch_s * 1000) // (self.seconds * 1000) * self.seconds

    def end(self, start: int) -> int:
        """Exclusive end of the bucket starting at ``start``."""
        return start + self.seconds

    def divides(self, coarser: Bucket) -> bool:
        """True if every ``coarser`` bucket is a whole number of these buckets."""
        return coarser.seconds % self.seconds == 0

    def starts(self, from_s: float, to_s: float) -> list[int]:
        """Starts of the buckets that overlap ``[from_s, to_s)``, in order."""
        if to_s <= from_s:
            return []
        first = self.bucket_of(from_s)
        return list(range(first, math.ceil(to_s / self.seconds) * self.seconds, self.seconds))

    def __str__(self) -> str:
        return self.label


def ingest_epoch(record_timestamp_ms: int, epoch_seconds: int) -> int:
    """The ingest epoch of a Kafka record: its broker timestamp floored to the epoch length.

    The one function that splits work between batch (epochs ``< cutoff``) and speed
    (epochs ``>= cutoff``). Returned as the epoch's start in whole seconds.
    """
    return (record_timestamp_ms // 1000) // epoch_seconds * epoch_seconds
