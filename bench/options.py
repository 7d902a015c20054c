"""What the command line chose: full or quick sizes, and how many runs per figure."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class BenchOptions:
    quick: bool = False
    runs: int = 3
    keep_files: bool = False

    def size(self, full: int, quick: int) -> int:
        return quick if self.quick else full

    def seconds(self, full: float, quick: float) -> float:
        return quick if self.quick else full
