"""``parse_fhir_time`` (integer arithmetic) gives the answers of the timezone-aware datetime twin."""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import datetime, timedelta, timezone

import pytest

from ehrfm.ingest.fhir.times import _DATETIME, TimeParseError, parse_fhir_time

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def _aware(value: str) -> int:
    """The reference twin: the aware datetime minus the epoch, as the parser did before."""
    m = _DATETIME.match(value.strip())
    if m is None:
        raise TimeParseError(f"not a FHIR date/dateTime: {value!r}")
    year, month, day, hh, mi, ss, frac, zone = m.groups()
    try:
        micro = int((frac or "0")[:6].ljust(6, "0"))
        tz = timezone.utc
        if zone and zone != "Z":
            sign = -1 if zone[0] == "-" else 1
            tz = timezone(sign * timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6])))
        dt = datetime(int(year), int(month or 1), int(day or 1), int(hh or 0), int(mi or 0), int(ss or 0),
                      micro, tzinfo=tz)
    except ValueError as e:
        raise TimeParseError(f"impossible date/time {value!r}: {e}") from None
    return (dt - _EPOCH) // timedelta(microseconds=1)


def _either(fn: Callable[[str], int], value: str) -> object:
    try:
        return fn(value)
    except TimeParseError as e:
        return ("error", str(e))


def _random_values(n: int) -> list[str]:
    rng = random.Random(17)
    out = []
    for _ in range(n):
        y = rng.choice([1, 1899, 1969, 1970, 2000, 2019, 2024, 9999])
        mo, d = rng.randint(0, 13), rng.randint(0, 32)
        h, mi, s = rng.randint(0, 25), rng.randint(0, 61), rng.randint(0, 61)
        frac = rng.choice(["", ".5", ".123456", ".1234567", ".000001"])
        zone = rng.choice(["", "Z", "+00:00", "-05:00", "+14:00", "+23:59", "-23:59", "+24:00", "-24:00",
                           "+99:99", "+05:30", "-00:30"])
        shape = rng.randint(0, 5)
        v = f"{y:04d}"
        if shape >= 1:
            v += f"-{mo:02d}"
        if shape >= 2:
            v += f"-{d:02d}"
        if shape >= 3:
            v += f"T{h:02d}:{mi:02d}"
        if shape >= 4:
            v += f":{s:02d}{frac}"
        if shape >= 3:
            v += zone
        out.append(v)
    return out


def test_integer_arithmetic_matches_the_aware_datetime() -> None:
    values = _random_values(20_000)
    ok = 0
    for v in values:
        want = _either(_aware, v)
        assert _either(parse_fhir_time.__wrapped__, v) == want, v
        assert _either(parse_fhir_time, v) == want, v
        ok += not isinstance(want, tuple)
    assert 1_000 < ok < len(values)  # both valid and invalid values were drawn


@pytest.mark.parametrize("value", ["2018-02-10T16:42:34Z", "1970-01-01", "1969-12-31T23:59:59.999999Z",
                                   "2019-05-31T23:37:54+02:00", "2019-05-31T00:10:00-14:00", "2019",
                                   "2019-02-30", "2019-01-01T00:00:00+24:00", "2019-01-01T00:00:00-24:00",
                                   "0001-01-01T00:00:00+00:30", " 2019-01-01 "])
def test_named_values(value: str) -> None:
    assert _either(parse_fhir_time.__wrapped__, value) == _either(_aware, value)
