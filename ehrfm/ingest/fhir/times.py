"""FHIR ``date`` / ``dateTime`` / ``instant`` strings -> naive UTC microseconds since 1970-01-01.

FHIR allows partial dates (``2019``, ``2019-05``, ``2019-05-31``) and date-times with a zone offset
(``2019-05-31T23:37:54+02:00``, ``...Z``) and an optional fraction. Partial dates become the first
instant of the period; date-times are converted to UTC and the zone dropped (MEDS times are naive).
A date-time without an offset is not valid FHIR but is common in exports: it is read as UTC.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from functools import lru_cache

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_EPOCH_ORDINAL = _EPOCH.toordinal()
_ONE_US = timedelta(microseconds=1)
US_PER_DAY = 86_400_000_000

# FHIR's own regex for dateTime, split into groups (year, month, day, time, fraction, zone).
_DATETIME = re.compile(
    r"^(\d{4})(?:-(\d{2})(?:-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2})(?:\.(\d+))?)?(Z|[+-]\d{2}:\d{2})?)?)?)?$"
)


class TimeParseError(ValueError):
    """A string that is not a FHIR date, dateTime or instant."""


@lru_cache(maxsize=262144)
def parse_fhir_time(value: str) -> int:
    """Microseconds since the Unix epoch (naive UTC) of a FHIR date/dateTime/instant string.

    Raises :class:`TimeParseError` naming the value when it does not parse (bad shape or an
    impossible calendar date such as ``2019-02-30``). Cached: exports repeat the same timestamps.
    """
    if not isinstance(value, str):
        raise TimeParseError(f"not a date string: {value!r}")
    m = _DATETIME.match(value.strip())
    if m is None:
        raise TimeParseError(f"not a FHIR date/dateTime: {value!r}")
    year, month, day, hh, mi, ss, frac, zone = m.groups()
    try:
        micro = int(frac[:6].ljust(6, "0")) if frac else 0
        offset_us = 0
        if zone and zone != "Z":
            offset_us = (int(zone[1:3]) * 60 + int(zone[4:6])) * 60_000_000 * (-1 if zone[0] == "-" else 1)
            if not -US_PER_DAY < offset_us < US_PER_DAY:  # let timezone() raise its own error, as before
                timezone(timedelta(microseconds=offset_us))
        h, mnt, sec = int(hh or 0), int(mi or 0), int(ss or 0)
        # the naive datetime only checks the calendar (month 13, Feb 30, hour 25); the instant is plain
        # integer arithmetic (no timezone object and timedelta division per call: most values are new)
        days = datetime(int(year), int(month or 1), int(day or 1), h, mnt, sec, micro).toordinal()
    except ValueError as e:  # month 13, Feb 30, hour 25, offset beyond 24h ...
        raise TimeParseError(f"impossible date/time {value!r}: {e}") from None
    return ((days - _EPOCH_ORDINAL) * 86_400 + (h * 60 + mnt) * 60 + sec) * 1_000_000 + micro - offset_us


def is_date_only(value: str) -> bool:
    """True when ``value`` carries no time of day (``YYYY``, ``YYYY-MM`` or ``YYYY-MM-DD``)."""
    return "T" not in value


def now_us() -> int:
    """The current time as naive-UTC microseconds since the epoch."""
    return (datetime.now(timezone.utc) - _EPOCH) // _ONE_US
