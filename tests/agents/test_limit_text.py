"""parse_reset / parse_retry_after: every documented form, real samples, DST edges.

Expected values are built independently with datetime + zoneinfo (or written in UTC)."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ado_ray.agents.limit_text import parse_reset, parse_retry_after
from tests.agents.conftest import sample

ROME = ZoneInfo("Europe/Rome")
NEW_YORK = ZoneInfo("America/New_York")
TOKYO = ZoneInfo("Asia/Tokyo")
NOW = datetime(2026, 6, 10, 1, 0, tzinfo=UTC)  # 03:00 in Rome, 21:00 (Jun 9) in New York


def at(zone: ZoneInfo, y: int, mo: int, d: int, h: int = 0, mi: int = 0) -> float:
    """Epoch of a wall time (fold=0) in `zone`: the expected value, built by zoneinfo."""
    return datetime(y, mo, d, h, mi, tzinfo=zone).timestamp()


def utc(y: int, mo: int, d: int, h: int = 0, mi: int = 0) -> float:
    return datetime(y, mo, d, h, mi, tzinfo=UTC).timestamp()


# -- Claude clock form -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "now", "expected"),
    [
        ("You've hit your limit · resets 4:50am (Europe/Rome)", NOW, at(ROME, 2026, 6, 10, 4, 50)),
        (  # 4:50 in Rome has passed at 05:00 Rome time: tomorrow
            "You've hit your limit · resets 4:50am (Europe/Rome)",
            datetime(2026, 6, 10, 3, 0, tzinfo=UTC),
            at(ROME, 2026, 6, 11, 4, 50),
        ),
        (
            "5-hour limit reached ∙ resets 4pm (America/New_York)",
            NOW,
            at(NEW_YORK, 2026, 6, 10, 16),
        ),
        ("resets 10:30 PM (UTC)", NOW, utc(2026, 6, 10, 22, 30)),
        ("resets 10:30 p.m. (UTC)", NOW, utc(2026, 6, 10, 22, 30)),
        ("resets 4:50am", NOW, utc(2026, 6, 10, 4, 50)),  # no zone: UTC
        ("resets 12:30am", NOW, utc(2026, 6, 11, 0, 30)),
        ("resets 12pm (UTC)", NOW, utc(2026, 6, 10, 12)),
        ("Your limit will reset at 16:00 (Asia/Tokyo)", NOW, at(TOKYO, 2026, 6, 10, 16)),
        ("resets 1am", NOW, NOW.timestamp()),  # exactly now: now, not tomorrow
        (  # the same instant expressed in another zone gives the same answer
            "resets 4:50am (Europe/Rome)",
            NOW.astimezone(TOKYO),
            at(ROME, 2026, 6, 10, 4, 50),
        ),
    ],
)
def test_clock_form(text: str, now: datetime, expected: float) -> None:
    assert parse_reset(text, now) == expected


def test_unknown_zone_yields_none_and_lets_later_forms_match() -> None:
    assert parse_reset("resets 4:50am (Mars/Olympus)", NOW) is None
    assert parse_reset("resets 4:50am (europe/rome)", NOW) is None
    text = "resets 4:50am (Mars/Olympus); retry after 30s"
    assert parse_reset(text, NOW) == NOW.timestamp() + 30


# -- dated form ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("resets Oct 31, 9am", utc(2026, 10, 31, 9)),
        ("resets Oct 31 at 9:00am (Asia/Tokyo)", at(TOKYO, 2026, 10, 31, 9)),
        ("resets November 3, 2026 9am", utc(2026, 11, 3, 9)),
        ("resets November 3, 2027, 9am (America/New_York)", at(NEW_YORK, 2027, 11, 3, 9)),
        ("resets on Sept 1st at 9:15 PM", utc(2026, 9, 1, 21, 15)),
        ("resets Jan 5, 9am", utc(2027, 1, 5, 9)),  # already past this year: next year
        ("resets Feb 29, 9am", utc(2028, 2, 29, 9)),  # next leap year
        ("resets June 10, 12:30am", utc(2026, 6, 10, 0, 30)),  # today, hour passed: today
        ("resets Jun 9, 11pm (America/New_York)", at(NEW_YORK, 2026, 6, 9, 23)),  # NY today
    ],
)
def test_dated_form(text: str, expected: float) -> None:
    assert parse_reset(text, NOW) == expected


@pytest.mark.parametrize("text", ["resets Feb 30, 9am", "resets Oct 31, 13pm", "resets Oct 31"])
def test_dated_form_rejects_impossible(text: str) -> None:
    assert parse_reset(text, NOW) is None


# -- epoch and ISO forms ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Claude AI usage limit reached|1750708800", 1750708800.0),
        ("Claude AI usage limit reached|1750708800123", 1750708800.123),
        ('{"resetsAt": "1750708800"}', 1750708800.0),
        ('{"resetsAt":1750708800000}', 1750708800.0),
        ("reset_at=1750708800", 1750708800.0),
        ('{\\"resetsAt\\":\\"1750708800\\"}', 1750708800.0),  # inside a JSON string
        ("1750708800", 1750708800.0),
        (' "1750708800000"\n', 1750708800.0),
    ],
)
def test_epoch_forms(text: str, expected: float) -> None:
    assert parse_reset(text, NOW) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-28T04:50:00Z", utc(2026, 11, 28, 4, 50)),
        ("anthropic-ratelimit-tokens-reset: 2026-11-28T04:50:00Z", utc(2026, 11, 28, 4, 50)),
        ('"resetsAt": "2026-11-28T04:50:00+01:00"', utc(2026, 11, 28, 3, 50)),
        ("limited until 2026-11-28T04:50:00.250-05:00", utc(2026, 11, 28, 9, 50) + 0.25),
        ("try again after 2026-11-28 04:50:00", utc(2026, 11, 28, 4, 50)),  # naive: UTC
    ],
)
def test_iso_forms(text: str, expected: float) -> None:
    assert parse_reset(text, NOW) == expected


# -- relative forms --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("retry after 27s", 27),
        ("Please retry in 27.5s", 27.5),
        ("Please try again in 2 minutes.", 120),
        ("resets in 1h 30m", 5400),
        ("in 1 hour, 5 minutes and 3 seconds", 3903),
        ("in 1h30m", 5400),
        ("retry in 500ms", 0.5),
        ("retry-after: 30", 30),
        ("Retry-After: 30\r\nContent-Type: text/plain", 30),
        ('{"retry-after": "45"}', 45),
        ("Retry-After: 30 (seconds)", 30),
        ("quotaResetDelay: 27s", 27),
        ('retryDelay: "27s"', 27),
        ('{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "0.5s"}', 0.5),
        ('\\"retryDelay\\":\\"27s\\"', 27),
        ("Suggested retry after 1s.", 1),
    ],
)
def test_relative_forms(text: str, seconds: float) -> None:
    assert parse_reset(text, NOW) == NOW.timestamp() + seconds


def test_retry_after_header_with_http_date_in_text() -> None:
    text = "HTTP/1.1 429\r\nRetry-After: Wed, 28 Oct 2026 07:28:00 GMT\r\n"
    assert parse_reset(text, NOW) == utc(2026, 10, 28, 7, 28)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("30", NOW.timestamp() + 30),
        (" 120 ", NOW.timestamp() + 120),
        ("0", NOW.timestamp()),
        ("Wed, 28 Oct 2026 07:28:00 GMT", utc(2026, 10, 28, 7, 28)),
        ("Wed, 28 Oct 2026 07:28:00 +0200", utc(2026, 10, 28, 5, 28)),
        ("Wed, 28 Oct 2026 07:28:00 -0000", utc(2026, 10, 28, 7, 28)),
        ("", None),
        ("-5", None),
        ("soon", None),
        ("30s", None),
    ],
)
def test_parse_retry_after(value: str, expected: float | None) -> None:
    assert parse_retry_after(value, NOW) == expected


# -- daylight saving time --------------------------------------------------------------------
# 2026: Rome springs forward Mar 29 02:00 CET -> 03:00 CEST (01:00 UTC) and falls back
# Oct 25 03:00 CEST -> 02:00 CET (01:00 UTC). New York springs forward Mar 8 02:00 EST ->
# 03:00 EDT (07:00 UTC) and falls back Nov 1 02:00 EDT -> 01:00 EST (06:00 UTC).


@pytest.mark.parametrize(
    ("text", "now", "expected"),
    [
        (  # Rome, 2:30 does not exist: the first valid instant after it is 03:00 CEST
            "resets 2:30am (Europe/Rome)",
            datetime(2026, 3, 28, 23, 0, tzinfo=ROME),
            utc(2026, 3, 29, 1, 0),
        ),
        (  # Rome, after the gap has passed: tomorrow's 2:30 CEST
            "resets 2:30am (Europe/Rome)",
            datetime(2026, 3, 29, 1, 10, tzinfo=UTC),
            utc(2026, 3, 30, 0, 30),
        ),
        (  # Rome, 2:30 happens twice: the first one, still CEST
            "resets 2:30am (Europe/Rome)",
            datetime(2026, 10, 24, 23, 0, tzinfo=ROME),
            utc(2026, 10, 25, 0, 30),
        ),
        (  # Rome, the first 2:30 has passed, the second (CET) is still ahead
            "resets 2:30am (Europe/Rome)",
            datetime(2026, 10, 25, 0, 45, tzinfo=UTC),
            utc(2026, 10, 25, 1, 30),
        ),
        (  # Rome, 9am the morning after springing forward is 07:00 UTC, not 08:00
            "resets 9am (Europe/Rome)",
            datetime(2026, 3, 28, 23, 0, tzinfo=ROME),
            utc(2026, 3, 29, 7, 0),
        ),
        (  # New York, 2:30 does not exist: 03:00 EDT
            "resets 2:30am (America/New_York)",
            datetime(2026, 3, 8, 0, 0, tzinfo=NEW_YORK),
            utc(2026, 3, 8, 7, 0),
        ),
        (  # New York, 1:30 happens twice: the first one, still EDT
            "resets 1:30am (America/New_York)",
            datetime(2026, 11, 1, 0, 0, tzinfo=NEW_YORK),
            utc(2026, 11, 1, 5, 30),
        ),
        (  # New York, 9am asked at 11pm before falling back: 9am EST is 14:00 UTC
            "resets 9am (America/New_York)",
            datetime(2026, 10, 31, 23, 0, tzinfo=NEW_YORK),
            utc(2026, 11, 1, 14, 0),
        ),
        (  # dated, across the change: Nov 2 is EST
            "resets Nov 2 at 9am (America/New_York)",
            datetime(2026, 10, 30, 12, 0, tzinfo=UTC),
            utc(2026, 11, 2, 14, 0),
        ),
        (  # dated, across the change: Mar 30 is CEST
            "resets Mar 30 at 9am (Europe/Rome)",
            datetime(2026, 3, 27, 12, 0, tzinfo=UTC),
            utc(2026, 3, 30, 7, 0),
        ),
        (  # dated, in the gap
            "resets March 29, 2026 2:30am (Europe/Rome)",
            NOW,
            utc(2026, 3, 29, 1, 0),
        ),
        (  # dated, in the fold: the first occurrence
            "resets Oct 25 at 2:30am (Europe/Rome)",
            NOW,
            utc(2026, 10, 25, 0, 30),
        ),
        (  # Samoa skipped Dec 30, 2011 entirely: the first valid instant is Dec 31 00:00
            "resets 9am (Pacific/Apia)",
            datetime(2011, 12, 29, 22, 0, tzinfo=UTC),
            utc(2011, 12, 30, 10, 0),
        ),
    ],
)
def test_dst_edges(text: str, now: datetime, expected: float) -> None:
    assert parse_reset(text, now) == expected


# -- real samples ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "seconds"),
    [
        ("claude-2.1.332-429-after-retries.stream.jsonl", None),  # per-minute limit, no time
        ("codex-0.171.0-429.jsonl", None),
        ("gemini-0.61.0-429.stderr.txt", 1),  # "Suggested retry after 1s", not "5630ms"
        ("gemini-0.61.0-429.stream.jsonl", 1),  # not the JSON "timestamp" fields
    ],
)
def test_real_samples(name: str, seconds: float | None) -> None:
    found = parse_reset(sample(name), NOW)
    assert found == (None if seconds is None else NOW.timestamp() + seconds)


# -- preference ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("retry after 30s. Claude AI usage limit reached|1750708800", 1750708800.0),
        ("resets 4pm (UTC), resetsAt: 2026-06-10T17:00:00Z", utc(2026, 6, 10, 17)),
        ("retry in 30s; limit resets Oct 31, 9am (UTC)", utc(2026, 10, 31, 9)),
        ("Please retry in 27s. resets 4pm (America/New_York)", at(NEW_YORK, 2026, 6, 10, 16)),
        ("Please retry in 27.5s. quotaResetDelay: 27s", NOW.timestamp() + 27),
        ("done in 3s, then: try again in 2 minutes", NOW.timestamp() + 120),
        ("retry after 10s, later retry after 20s", NOW.timestamp() + 10),
    ],
)
def test_most_specific_form_wins(text: str, expected: float) -> None:
    assert parse_reset(text, NOW) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "hello world",
        "You've hit your limit",
        "resets soon",
        "resets 25:00",
        "resets 13pm",
        "resets 4 times",
        "limit|123",
        "Attempt 1 failed. Retrying after 5630ms...",
        '{"retry_delay_ms": 30275, "retryDelayMs": 1000}',
        '{"timestamp":"2026-11-27T14:43:20.728Z"}',
        "2026-13-45T99:99:99Z",
        "in 5 apples",
        "retry after a while",
        "exceeded retry limit, last status: 429 Too Many Requests",
    ],
)
def test_junk_is_none(text: str) -> None:
    assert parse_reset(text, NOW) is None


def test_naive_now_is_utc() -> None:
    assert parse_reset("retry after 5s", NOW.replace(tzinfo=None)) == NOW.timestamp() + 5


# -- properties ------------------------------------------------------------------------------

FRAGMENTS = [
    "resets ",
    "reset",
    "at ",
    "on ",
    "Oct ",
    "Feb 29",
    "31",
    ", ",
    "2026 ",
    "9999",
    "0000",
    "12",
    "4",
    ":",
    "50",
    "am",
    "pm",
    " PM",
    "(",
    ")",
    "Europe/Rome",
    "America",
    "../x",
    "Mars/Olympus",
    "UTC",
    "|",
    "limit reached",
    "1750708800",
    "1750708800000",
    "9" * 400,
    "resetsAt",
    '"',
    "\\",
    "T",
    "-",
    "Z",
    "+01:00",
    "retry after ",
    "retry-after: ",
    "in ",
    "try again in ",
    "quotaResetDelay: ",
    "retryDelay: ",
    "s",
    "ms",
    "h",
    "d",
    "minutes",
    ".",
    "5",
    " ",
    "\n",
    "Wed, 21 Oct 2015 07:28:00 GMT",
    "\x00",
    "٣",
]
TEXTS = st.one_of(st.text(), st.lists(st.sampled_from(FRAGMENTS), max_size=25).map("".join))
NOWS = st.datetimes(timezones=st.timezones())


@settings(max_examples=300, deadline=None)
@given(text=TEXTS, now=NOWS)
def test_never_raises(text: str, now: datetime) -> None:
    for found in (parse_reset(text, now), parse_retry_after(text, now)):
        assert found is None or (isinstance(found, float) and math.isfinite(found))


@settings(max_examples=300, deadline=None)
@given(
    now=st.datetimes(min_value=datetime(1990, 1, 1), max_value=datetime(2100, 1, 1)).map(
        lambda dt: dt.replace(tzinfo=UTC)
    ),
    zone=st.sampled_from(["Europe/Rome", "America/New_York", "Australia/Lord_Howe", "UTC"]),
    hour=st.integers(1, 12),
    minute=st.integers(0, 59),
    ampm=st.sampled_from(["am", "pm"]),
)
def test_clock_is_next_matching_wall_time(
    now: datetime, zone: str, hour: int, minute: int, ampm: str
) -> None:
    found = parse_reset(f"resets {hour}:{minute:02d}{ampm} ({zone})", now)
    assert found is not None
    assert now.timestamp() <= found < now.timestamp() + timedelta(days=1, hours=2).total_seconds()
    wall = datetime.fromtimestamp(found, ZoneInfo(zone))
    wanted = (hour % 12 + (12 if ampm == "pm" else 0), minute)
    if (wall.hour, wall.minute) != wanted:  # only in a spring-forward gap: the change itself
        before = datetime.fromtimestamp(found - 1, ZoneInfo(zone))
        assert wall.utcoffset() != before.utcoffset()
