"""When does a provider limit reset? Read it from an agent CLI's text, as epoch seconds.

`parse_reset(text, now)` tries these forms, most specific first. The first form that
yields a time wins; within a form, the first match in the text wins.

1. Epoch: `Claude AI usage limit reached|1750708800` (pipe, after the word "limit"),
   `"resetsAt": "1750708800"` (also `resetAt`, `reset_at`; quoted or not), or a text that
   is only such a number. 10 digits are seconds, 13 digits are milliseconds.
2. ISO-8601 (`2026-11-28T04:50:00Z`, `+01:00` offsets; no offset means UTC) when a reset
   word (reset*, retry*, until, after, again, available) precedes it on the same line
   with no digit between, e.g. `anthropic-ratelimit-tokens-reset: 2026-...Z`, or when the
   text is only the timestamp. Other timestamps (log lines, JSON `timestamp`) are ignored.
3. Dated clock: `resets Oct 31, 9am`, `resets Oct 31 at 9:00am (Asia/Tokyo)`,
   `resets November 3, 2026 9am`. Without a year, the first year whose date is today or
   later in that zone (today with the hour already past gives a past instant, never a
   reset a year away).
4. Clock: `resets 4:50am (Europe/Rome)`, `resets 4pm (America/New_York)`,
   `resets 10:30 PM (UTC)`, `resets at 16:00`: the first such wall time at or after `now`
   (today if still ahead, else tomorrow).
5. Header and RetryInfo: `retry-after: 30` (seconds, or an HTTP-date),
   `quotaResetDelay: 27s`, `retryDelay: "27s"` (also JSON-escaped quotes).
6. Prose delay: `retry after 27s`, `Please retry in 27.5s`, `try again in 2 minutes`.
7. Bare delay: `in 1h 30m` (units ms, s, m, h, d and their spelled-out names).

Zones: forms 3 and 4 without `(Zone)` are UTC. An unknown zone name makes that match
yield nothing, so a later form may still match. Wall times are resolved with zoneinfo:
a time skipped when clocks spring forward becomes the first valid instant after it (the
change itself: 2:30 in Rome on that night is 3:00 CEST); a time repeated when clocks fall
back is its first occurrence, except that form 4 takes the second one if the first has
already passed and the second has not.

Client-side backoff is not a reset and is ignored: `Retrying after 5630ms`,
`retry_delay_ms`, `retryDelayMs`. No input raises; anything unreadable gives None.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from email.utils import parsedate_to_datetime
from zoneinfo import ZoneInfo

Handler = Callable[[re.Match[str], datetime], float | None]

_NUM = r"\d+(?:\.\d+)?"
_UNIT = (
    r"(?:milliseconds?|msecs?|ms|seconds?|secs?|s|minutes?|mins?|m|hours?|hrs?|h|days?|d)"
    r"(?![a-z])"
)
_DURATION = rf"{_NUM}\s*{_UNIT}(?:[\s,]*(?:and\s+)?{_NUM}\s*{_UNIT})*"
_Q = r"(?:\\?[\"'])?"  # an optional quote, JSON-escaped or not
_EPOCH = r"(?:\d{13}|\d{10})(?:\.\d+)?(?!\d)"
_ISO = r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?(?!\d)"
_TIME = (
    r"(?P<hour>\d{1,2})(?::(?P<minute>\d{2})(?!\d))?"
    r"(?:\s*(?P<ampm>[ap])\.?m(?![a-z])\.?)?"
    r"(?:\s*\(\s*(?P<zone>[A-Za-z][\w+\-]*(?:/[\w+\-]+)*)\s*\))?"
)
_MONTH = (
    r"(?P<month>jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?"
    r"|sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)\.?"
)
_UNIT_SECONDS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")


def _aware(now: datetime) -> datetime:
    return now if now.utcoffset() is not None else now.replace(tzinfo=UTC)


def _after(now: datetime, seconds: float) -> float | None:
    when = _aware(now).timestamp() + seconds
    return when if seconds >= 0 and math.isfinite(when) else None


def _seconds(duration: str) -> float:
    total = 0.0
    for number, unit in re.findall(rf"({_NUM})\s*({_UNIT})", duration, re.I):
        unit = unit.lower()
        ms = unit.startswith(("ms", "mil"))  # not "m", "min", "minutes"
        total += float(number) * (0.001 if ms else _UNIT_SECONDS[unit[0]])
    return total


def _zone(name: str | None) -> tzinfo | None:
    """The zone called `name` (UTC when absent), or None when zoneinfo does not know it."""
    if name is None:
        return UTC
    try:
        return ZoneInfo(name)
    except (KeyError, ValueError, OSError):  # not found, malformed key, a directory name
        return None


def _clock(m: re.Match[str]) -> time | None:
    hour, minute = int(m["hour"]), int(m["minute"] or 0)
    if m["ampm"]:
        if not 1 <= hour <= 12:
            return None
        hour = hour % 12 + (12 if m["ampm"].lower() == "p" else 0)
    elif m["minute"] is None or hour > 23:
        return None
    return time(hour, minute) if minute < 60 else None


def _instants(wall: datetime, zone: tzinfo) -> list[datetime]:
    """The instants showing naive `wall` in `zone`: one; two, earlier first, in a fall-back
    fold; in a spring-forward gap, the first valid instant after it (the change itself)."""
    first, second = wall.replace(tzinfo=zone), wall.replace(tzinfo=zone, fold=1)
    a, b = first.timestamp(), second.timestamp()
    if a <= b:
        return [first] if a == b else [first, second]
    # In a gap, fold=1 applies the offset after the change, fold=0 the one before, so
    # the change lies in (b, a]: bisect it to the second.
    lo, hi = math.floor(b), math.ceil(a)
    offset_after = datetime.fromtimestamp(hi, zone).utcoffset()
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if datetime.fromtimestamp(mid, zone).utcoffset() == offset_after:
            hi = mid
        else:
            lo = mid
    return [datetime.fromtimestamp(hi, zone)]


def _epoch(m: re.Match[str], now: datetime) -> float | None:
    value = m["epoch"]
    return float(value) / (1000 if len(value.partition(".")[0]) == 13 else 1)


def _iso(m: re.Match[str], now: datetime) -> float | None:
    when = datetime.fromisoformat(m["iso"])
    return _aware(when).timestamp()


def _dated(m: re.Match[str], now: datetime) -> float | None:
    clock, zone = _clock(m), _zone(m["zone"])
    if clock is None or zone is None:
        return None
    today = now.astimezone(zone).date()
    years = [int(m["year"])] if m["year"] else range(today.year, today.year + 9)
    for year in years:
        try:
            day = date(year, _MONTHS.index(m["month"][:3].lower()) + 1, int(m["day"]))
        except ValueError:  # Feb 29 in a common year, Apr 31, year 0 or 10000
            continue
        if m["year"] or day >= today:
            return _instants(datetime.combine(day, clock), zone)[0].timestamp()
    return None


def _next_clock(m: re.Match[str], now: datetime) -> float | None:
    clock, zone = _clock(m), _zone(m["zone"])
    if clock is None or zone is None:
        return None
    today = now.astimezone(zone).date()
    candidates = [
        when
        for day in (today, today + timedelta(days=1))
        for when in _instants(datetime.combine(day, clock), zone)
        if when >= now
    ]
    return min(candidates).timestamp() if candidates else None


def _header(m: re.Match[str], now: datetime) -> float | None:
    value = m["value"].strip()
    found = parse_retry_after(value, now)
    lead = re.match(rf"({_NUM})\s*({_UNIT})?(?![\w:])", value, re.I)
    if found is None and lead:
        return _after(now, _seconds(lead[1] + (lead[2] or "s")))
    return found


def _retry_info(m: re.Match[str], now: datetime) -> float | None:
    return _after(now, float(m["num"]) / (1000 if (m["unit"] or "").lower() == "ms" else 1))


def _delay(m: re.Match[str], now: datetime) -> float | None:
    return _after(now, _seconds(m["dur"]))


_FORMS: list[tuple[re.Pattern[str], Handler]] = [
    (re.compile(p, re.I), handler)
    for p, handler in [
        (rf"\blimit\b[^|\n]{{0,40}}\|\s*(?P<epoch>{_EPOCH})", _epoch),
        (rf"\bresets?_?at{_Q}\s*[:=]\s*{_Q}(?P<epoch>{_EPOCH})", _epoch),
        (rf"\A\s*{_Q}(?P<epoch>{_EPOCH}){_Q}\s*\Z", _epoch),
        (
            rf"\b(?:reset\w*|retry\w*|until|after|again|available\w*)\b[^\n\d]{{0,30}}?"
            rf"(?P<iso>{_ISO})",
            _iso,
        ),
        (rf"\A\s*{_Q}(?P<iso>{_ISO}){_Q}\s*\Z", _iso),
        (
            rf"\bresets?\s+(?:on\s+)?{_MONTH}\s+(?P<day>\d{{1,2}})(?:st|nd|rd|th)?"
            rf"(?:,?\s+(?P<year>\d{{4}}))?,?\s+(?:at\s+)?{_TIME}",
            _dated,
        ),
        (rf"\bresets?\s+(?:at\s+)?{_TIME}", _next_clock),
        (rf"\bretry[-_]after{_Q}\s*[:=]\s*{_Q}(?P<value>[^\"'\\\r\n}}]+)", _header),
        (
            rf"\b(?:quotaResetDelay|retryDelay){_Q}\s*[:=]\s*{_Q}(?P<num>{_NUM})\s*"
            r"(?P<unit>ms|s)?(?![a-z])",
            _retry_info,
        ),
        (rf"\b(?:retry|try\s+again)\s+(?:after|in)\s+(?P<dur>{_DURATION})", _delay),
        (rf"\bin\s+(?P<dur>{_DURATION})", _delay),
    ]
]


def parse_reset(text: str, now: datetime) -> float | None:
    """The reset time found in `text` as epoch seconds, or None (forms: module docstring).

    `now` should be aware (a naive one is taken as UTC); it anchors relative delays and
    picks the next occurrence of a clock time or a date without a year."""
    now = _aware(now)
    for pattern, handler in _FORMS:
        for match in pattern.finditer(text):
            try:
                found = handler(match, now)
            except (ValueError, OverflowError):  # out-of-range values in odd text
                found = None
            if found is not None and math.isfinite(found):
                return found
    return None


def parse_retry_after(value: str, now: datetime) -> float | None:
    """An HTTP `Retry-After` value (delta seconds or an HTTP-date) as epoch seconds, or
    None. An HTTP-date without a zone (`-0000`) is taken as UTC."""
    value = value.strip()
    if re.fullmatch(_NUM, value):
        return _after(now, float(value))
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return _aware(when).timestamp()
