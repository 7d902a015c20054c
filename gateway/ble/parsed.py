"""What a parser wrapper says about one advertisement: a reading's content, a duplicate, or bad input."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from gateway.ble.reasons import BadReason, DuplicateReason
from saltmarsh.contract.errors import Reason, ValidationError


class Kind(StrEnum):
    """The advertisement formats the gateway decodes, each with its parser library."""

    BTHOME = "bthome"
    RUUVI = "ruuvi"


@dataclass(frozen=True, slots=True)
class Parsed:
    """Exactly one of: metrics or events (a reading), `duplicate`, or `bad`."""

    metrics: dict[str, float] = field(default_factory=dict)
    units: dict[str, str] = field(default_factory=dict)
    events: tuple[str, ...] = ()
    duplicate: DuplicateReason | None = None
    bad: BadReason | None = None
    encrypted: bool = False
    model: str | None = None
    firmware: str | None = None
    sequence: int | None = None  # Ruuvi data format 5's measurement sequence, for dedup

    def __post_init__(self) -> None:
        verdicts = sum((bool(self.metrics or self.events), self.duplicate is not None, self.bad is not None))
        if verdicts != 1:
            raise ValidationError(
                Reason.INVALID_VALUE, "parsed", "exactly one of a reading, a duplicate or bad input is needed"
            )

    @property
    def is_reading(self) -> bool:
        return self.duplicate is None and self.bad is None
