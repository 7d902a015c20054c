"""Where a timestamp falls in the site's week: the hour-of-week bucket, in local time.

Buckets follow the site's wall clock (`zoneinfo`), not UTC, because that is the clock people and
heating schedules keep: after a daylight-saving change, 09:00 on a Tuesday is still "Tue 09:00".
The hour repeated when clocks go back lands twice in its bucket; the hour skipped when they go
forward is simply missing that week.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from saltmarsh.contract.errors import ConfigError

DAY_NAMES = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
HOURS_PER_DAY = 24
HOURS_PER_WEEK = 7 * HOURS_PER_DAY


@dataclass(frozen=True, slots=True)
class LocalHour:
    """The local hour a timestamp falls in.

    `week_slot` is 0 (Mon 00:00) .. 167 (Sun 23:00); `hour` is the hour of day; `hour_key` numbers
    local wall-clock hours, so that every reading of one local hour shares it.
    """

    week_slot: int
    hour: int
    hour_key: int

    def __post_init__(self) -> None:
        if not 0 <= self.week_slot < HOURS_PER_WEEK:
            raise ValueError(f"week_slot {self.week_slot!r} is not in 0..167")
        if not 0 <= self.hour < HOURS_PER_DAY:
            raise ValueError(f"hour {self.hour!r} is not in 0..23")

    @property
    def label(self) -> str:
        return bucket_label(self.week_slot)


def bucket_label(week_slot: int) -> str:
    """'Tue 10:00' for slot 34."""
    day, hour = divmod(week_slot, HOURS_PER_DAY)
    return f"{DAY_NAMES[day]} {hour:02d}:00"


def site_zone(name: str) -> ZoneInfo:
    """The IANA zone `name` (e.g. Europe/London); ConfigError naming `tz` otherwise."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError("tz", f"{name[:60]!r} is not an IANA time zone such as Europe/London or UTC") from None


def local_hour(timestamp_s: float, zone: ZoneInfo) -> LocalHour:
    local = datetime.fromtimestamp(timestamp_s, UTC).astimezone(zone)
    offset = local.utcoffset()
    offset_s = offset.total_seconds() if offset is not None else 0.0
    return LocalHour(
        week_slot=local.weekday() * HOURS_PER_DAY + local.hour,
        hour=local.hour,
        hour_key=int((timestamp_s + offset_s) // 3600),
    )
