"""What the command line chose: full or quick sizes, how many runs per figure, and an outage's length."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class BenchOptions:
    quick: bool = False
    runs: int = 3
    keep_files: bool = False
    outage_s: float | None = None  # --outage-s: a bench's outage instead of its full or quick default

    def size(self, full: int, quick: int) -> int:
        return quick if self.quick else full

    def seconds(self, full: float, quick: float) -> float:
        return quick if self.quick else full

    def outage(self, full: float, quick: float) -> float:
        """An outage's length: --outage-s if given, else the mode's default."""
        return self.outage_s if self.outage_s is not None else self.seconds(full, quick)
