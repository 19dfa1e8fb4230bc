"""Quiet hours: the sending window in the recipient's time zone(s).

Unit tests of dunning.domain.quiet_hours (several zones per number, windows across midnight, DST,
zones whose windows never overlap, and a brute-force cross-check), then whole cases on the
time-skipping test server: an SMS due at night waits for the morning while the email goes out,
only the latest due step is sent, the schedule's end wins over a late window.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from dunning.domain.phones import validate_phone
from dunning.domain.quiet_hours import allowed, next_allowed, open_zones, parse_window, zones_for
from dunning.platform.db import Database
from dunning.platform.db.models import Account
from tests.fakes.plivo import FakePlivo
from tests.fakes.smtp import SmtpSink
from tests.helpers import add_customer, case_input, make_account, real_activities, running_worker

WINDOW = "08:00-21:00"
NY, LA = ZoneInfo("America/New_York"), ZoneInfo("America/Los_Angeles")


def at(zone: ZoneInfo | str, y: int, mo: int, d: int, h: int, mi: int = 0) -> datetime:
    """A wall-clock time in `zone`, as the UTC instant the workflow would pass."""
    z = ZoneInfo(zone) if isinstance(zone, str) else zone
    return datetime(y, mo, d, h, mi, tzinfo=z).astimezone(UTC)


def local(when: datetime, zone: ZoneInfo) -> str:
    return when.astimezone(zone).strftime("%Y-%m-%d %H:%M")


# --- windows and zones ------------------------------------------------------------------------


def test_parse_window() -> None:
    assert parse_window(WINDOW) == (datetime(1, 1, 1, 8).time(), datetime(1, 1, 1, 21).time())
    assert parse_window("off") is None
    assert parse_window("") is None


def test_window_edges_in_one_zone() -> None:
    zones = [LA]
    assert not allowed(at(LA, 2025, 1, 15, 7, 59), WINDOW, zones)
    assert allowed(at(LA, 2025, 1, 15, 8, 0), WINDOW, zones)
    assert allowed(at(LA, 2025, 1, 15, 20, 59), WINDOW, zones)
    assert not allowed(at(LA, 2025, 1, 15, 21, 0), WINDOW, zones)  # the end is exclusive
    assert allowed(at(LA, 2025, 1, 15, 3), "off", zones)
    # Before the window: this morning; after it: tomorrow morning.
    assert local(next_allowed(at(LA, 2025, 1, 15, 2), WINDOW, zones), LA) == "2025-01-15 08:00"
    assert local(next_allowed(at(LA, 2025, 1, 15, 22), WINDOW, zones), LA) == "2025-01-16 08:00"
    inside = at(LA, 2025, 1, 15, 12)
    assert next_allowed(inside, WINDOW, zones) == inside
    assert next_allowed(at(LA, 2025, 1, 15, 3), "off", zones) == at(LA, 2025, 1, 15, 3)
    # The answer is in the time zone of the `now` it was given.
    assert next_allowed(at(LA, 2025, 1, 15, 2), WINDOW, zones).tzinfo is UTC


def test_window_across_midnight() -> None:
    zones, night = [NY], "22:00-06:00"
    assert allowed(at(NY, 2025, 1, 15, 23), night, zones)
    assert allowed(at(NY, 2025, 1, 16, 5, 59), night, zones)
    assert not allowed(at(NY, 2025, 1, 16, 6), night, zones)
    assert local(next_allowed(at(NY, 2025, 1, 16, 6), night, zones), NY) == "2025-01-16 22:00"


def test_a_number_over_two_zones_needs_the_window_in_both() -> None:
    # Idaho's 208 spans Mountain (Boise) and Pacific time.
    info = validate_phone("+12085550123")
    zones = zones_for(",".join(info.time_zones), "UTC")
    assert {z.key for z in zones} == {"America/Boise", "America/Los_Angeles"}
    boise = ZoneInfo("America/Boise")
    # 07:30 in Los Angeles is 08:30 in Boise: not yet (Los Angeles sleeps).
    early = at(LA, 2025, 6, 10, 7, 30)
    assert not allowed(early, WINDOW, zones)
    assert local(next_allowed(early, WINDOW, zones), LA) == "2025-06-10 08:00"
    # 20:30 in Los Angeles is 21:30 in Boise: over for today (Boise's evening is over).
    late = at(LA, 2025, 6, 10, 20, 30)
    assert not allowed(late, WINDOW, zones)
    opens = next_allowed(late, WINDOW, zones)
    assert (local(opens, LA), local(opens, boise)) == ("2025-06-11 08:00", "2025-06-11 09:00")


def test_zones_for_falls_back_to_the_account_zone() -> None:
    assert [z.key for z in zones_for("Etc/Unknown", "Europe/Paris")] == ["Europe/Paris"]
    assert [z.key for z in zones_for(None, "Europe/Paris")] == ["Europe/Paris"]
    assert [z.key for z in zones_for("", "No/Such_Zone")] == ["UTC"]
    assert [z.key for z in zones_for("No/Such_Zone, Asia/Tokyo", "UTC")] == ["Asia/Tokyo"]
    assert [z.key for z in zones_for("Asia/Tokyo,Asia/Tokyo", "UTC")] == ["Asia/Tokyo"]


def test_dst_transitions() -> None:
    # Spring forward (New York, 9 March 2025, 02:00 -> 03:00): 08:00 is EDT, 12:00 UTC.
    opens = next_allowed(datetime(2025, 3, 9, 6, 30, tzinfo=UTC), WINDOW, [NY])
    assert opens == datetime(2025, 3, 9, 12, 0, tzinfo=UTC)
    # Fall back (2 November 2025, 02:00 -> 01:00): 08:00 is EST, 13:00 UTC.
    opens = next_allowed(datetime(2025, 11, 2, 5, 30, tzinfo=UTC), WINDOW, [NY])
    assert opens == datetime(2025, 11, 2, 13, 0, tzinfo=UTC)
    # A window opening at 02:30, which does not exist on the spring-forward night: it opens
    # when the clocks jump (03:00 EDT = 07:00 UTC), not an hour early nor half an hour late.
    opens = next_allowed(datetime(2025, 3, 9, 5, 0, tzinfo=UTC), "02:30-21:00", [NY])
    assert opens == datetime(2025, 3, 9, 7, 0, tzinfo=UTC)
    assert allowed(opens, "02:30-21:00", [NY])
    assert not allowed(opens - timedelta(seconds=1), "02:30-21:00", [NY])
    # In the fall-back fold, the first 01:30 counts.
    opens = next_allowed(datetime(2025, 11, 2, 5, 0, tzinfo=UTC), "01:30-21:00", [NY])
    assert opens == datetime(2025, 11, 2, 5, 30, tzinfo=UTC)
    # London and New York change on different dates: on 20 March 2025 New York is on EDT
    # (UTC-4), London still on GMT. 08:00 in London (08:00 UTC) is 04:00 in New York; both
    # are open from 08:00 in New York, 12:00 UTC.
    both = [ZoneInfo("Europe/London"), NY]
    opens = next_allowed(datetime(2025, 3, 20, 3, 0, tzinfo=UTC), WINDOW, both)
    assert opens == datetime(2025, 3, 20, 12, 0, tzinfo=UTC)


def test_zones_whose_windows_never_overlap() -> None:
    # UTC, UTC+8 and UTC-8 (January): no instant has all three between 08:00 and 21:00.
    zones = [ZoneInfo("UTC"), ZoneInfo("Asia/Shanghai"), LA]
    now = datetime(2025, 1, 15, 22, 30, tzinfo=UTC)
    sweep = [now + timedelta(minutes=m) for m in range(0, 48 * 60, 5)]
    assert not any(allowed(t, WINDOW, zones) for t in sweep)
    # The send waits for the first instant with the window open in as many zones as ever (2).
    assert max(open_zones(t, WINDOW, zones) for t in sweep) == 2
    opens = next_allowed(now, WINDOW, zones)
    assert open_zones(opens, WINDOW, zones) == 2
    assert all(open_zones(t, WINDOW, zones) < 2 for t in sweep if t < opens)
    assert opens == datetime(2025, 1, 16, 0, 0, tzinfo=UTC)  # 08:00 in Shanghai, 16:00 in LA
    # Already at the best there is: now.
    assert next_allowed(opens + timedelta(minutes=5), WINDOW, zones) == opens + timedelta(
        minutes=5)
    # A short window: Los Angeles and Berlin (9 hours apart) share no office hours. At 18:00
    # in Los Angeles both are closed: the next opening anywhere (09:00 in Berlin) is the best.
    office = "09:00-17:00"
    apart = [LA, ZoneInfo("Europe/Berlin")]
    opens = next_allowed(datetime(2025, 1, 16, 2, 0, tzinfo=UTC), office, apart)
    assert opens == datetime(2025, 1, 16, 8, 0, tzinfo=UTC)
    assert open_zones(opens, office, apart) == 1
    # At noon in Los Angeles one zone is open, as many as ever: now.
    noon = datetime(2025, 1, 15, 20, 0, tzinfo=UTC)
    assert next_allowed(noon, office, apart) == noon


def _brute_force(now: datetime, window: str, zones: list[ZoneInfo]) -> datetime | None:
    """The first minute at or after `now` (on `now`'s minute grid) that suits every zone."""
    for minutes in range(0, 3 * 24 * 60):
        t = now + timedelta(minutes=minutes)
        if allowed(t, window, zones):
            return t
    return None


def test_next_allowed_agrees_with_brute_force() -> None:
    rng = random.Random(20250309)
    names = ["America/New_York", "America/Los_Angeles", "America/Denver", "America/Phoenix",
             "America/Boise", "Europe/London", "Europe/Berlin", "Asia/Kolkata",
             "Australia/Adelaide", "Australia/Lord_Howe", "Pacific/Chatham", "Asia/Kathmandu",
             "America/Santiago", "America/St_Johns"]
    # Near DST changes in both hemispheres, and ordinary days.
    days = [datetime(2025, 3, 9), datetime(2025, 3, 30), datetime(2025, 4, 6),
            datetime(2025, 10, 26), datetime(2025, 11, 2), datetime(2025, 7, 1)]
    for _ in range(60):
        zones = [ZoneInfo(n) for n in rng.sample(names, rng.randint(1, 3))]
        start = rng.choice([0, 2, 7, 8, 9, 21, 22]) * 60 + rng.choice([0, 30])
        end = (start + rng.choice([6, 10, 13, 15]) * 60) % (24 * 60)
        window = f"{start // 60:02d}:{start % 60:02d}-{end // 60:02d}:{end % 60:02d}"
        now = (rng.choice(days) + timedelta(minutes=rng.randrange(0, 48 * 60, 15))).replace(
            tzinfo=UTC)
        expected = _brute_force(now, window, zones)
        got = next_allowed(now, window, zones)
        if expected is not None:
            assert got == expected, (window, [z.key for z in zones], now)
        else:  # never all open: as many as ever, and never earlier than needed
            best = max(open_zones(now + timedelta(minutes=m), window, zones)
                       for m in range(0, 2 * 24 * 60, 15))
            assert open_zones(got, window, zones) == best, (window, [z.key for z in zones], now)


# --- whole cases with time skipping ----------------------------------------------------------

# Zones without DST at every whole-hour offset from UTC-11 to UTC+14: at any instant one of
# them is between 01:00 and 03:00.
_NO_DST_ZONES = [
    "Pacific/Pago_Pago", "Pacific/Honolulu", "Pacific/Gambier", "Pacific/Pitcairn",
    "America/Phoenix", "America/Regina", "America/Bogota", "America/Caracas",
    "America/Sao_Paulo", "Atlantic/South_Georgia", "Atlantic/Cape_Verde", "Africa/Abidjan",
    "Africa/Lagos", "Africa/Johannesburg", "Europe/Istanbul", "Asia/Dubai", "Asia/Karachi",
    "Asia/Dhaka", "Asia/Bangkok", "Asia/Singapore", "Asia/Tokyo", "Australia/Brisbane",
    "Pacific/Noumea", "Pacific/Tarawa", "Pacific/Fakaofo", "Pacific/Kiritimati",
]


def zone_at_local_hour(now: datetime, hours: range) -> ZoneInfo:
    """A zone where the local time at `now` is within `hours`."""
    for name in _NO_DST_ZONES:
        zone = ZoneInfo(name)
        if now.astimezone(zone).hour in hours:
            return zone
    raise AssertionError(f"no zone with local hour in {hours} at {now}")




async def activity_times(handle: WorkflowHandle[Any, Any], name: str) -> list[datetime]:
    """When each attempt of activity `name` was scheduled (workflow time)."""
    times = []
    async for e in handle.fetch_history_events():
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED and (
            e.activity_task_scheduled_event_attributes.activity_type.name == name
        ):
            times.append(e.event_time.ToDatetime(tzinfo=UTC))
    return times


Outcome = tuple[dict[str, Any], dict[str, Any], datetime, dict[str, list[datetime]]]


class Case:
    """One account, one customer, one case on the time-skipping server."""

    def __init__(self, env: WorkflowEnvironment, db: Database, plivo: FakePlivo,
                 smtp: SmtpSink, uid: str, tag: str) -> None:
        self.env, self.db, self.plivo, self.smtp = env, db, plivo, smtp
        self.account = f"qh{tag}-{uid}"
        self.phone = "+1415556" + str(int(uid[:6], 16) % 10000).zfill(4)
        self.email = f"qh{tag}-{uid}@example.com"
        self.queue = f"qh{tag}-{uid}"

    def setup(self, *, schedule: str, grace: str, zones: str | None,
              quiet_hours: str = WINDOW, account_zone: str = "UTC") -> None:
        make_account(self.db, self.account, schedule=schedule, grace=grace, balance=10,
                     quiet_hours=quiet_hours)
        with self.db.session() as s:
            acct = s.get(Account, self.account)
            assert acct is not None
            acct.timezone = account_zone
        add_customer(self.db, self.account, "cus1", phone=self.phone, email=self.email,
                     time_zones=zones)

    async def run(self) -> Outcome:
        acts = real_activities(self.db, self.plivo, self.smtp)
        client = self.env.client
        async with running_worker(client, self.queue, acts):
            handle = await client.start_workflow(
                "DunningWorkflow", case_input(self.account, "inv1", "cus1"),
                id=f"dunning-{self.account}-inv1", task_queue=self.queue,
            )
            result = await handle.result()
            status = await handle.query("status")
            started = (await handle.describe()).start_time
            times = {n: await activity_times(handle, n) for n in ("send_email", "send_sms")}
        return result, status, started, times

    def sms_count(self) -> int:
        return len(self.plivo.accepted(self.phone.lstrip("+")))

    def email_count(self) -> int:
        return len(self.smtp.to(self.email))


def sms_statuses(status: dict[str, Any]) -> list[tuple[str, str]]:
    return [(r["status"], r["reason"]) for r in status["reminders"] if r["channel"] == "sms"]


async def test_sms_at_night_waits_for_the_morning_email_does_not(
    skipping_env: WorkflowEnvironment, sqlite_db: Database, plivo_server: FakePlivo,
    smtp_server: SmtpSink, uid: str,
) -> None:
    now = await skipping_env.get_current_time()
    night = zone_at_local_hour(now, range(1, 3))
    # Day there, 10-12 hours ahead: the night zone's 08:00 is still within the day zone's
    # window, so the two windows overlap from the night zone's morning on (whatever the hour
    # the suite runs at; 13 hours ahead would only overlap in the night zone's evening).
    lead = now.astimezone(night).hour
    day = zone_at_local_hour(now, range(lead + 10, lead + 12))
    case = Case(skipping_env, sqlite_db, plivo_server, smtp_server, uid, "a")
    # The number spans a zone where it is day and one where it is night: night decides.
    case.setup(schedule="0s", grace="1d", zones=f"{day.key},{night.key}")
    result, _status, started, times = await case.run()
    assert result == {"outcome": "exhausted", "emails_sent": 1, "sms_sent": 1,
                      "credits_spent": 1}
    assert (case.sms_count(), case.email_count()) == (1, 1)
    morning = next_allowed(started, WINDOW, [night, day])
    assert morning.astimezone(night).strftime("%H:%M") == "08:00"
    assert timedelta(hours=4) < morning - started < timedelta(hours=8)
    # Email at once; SMS tried at once (quiet hours), then sent when the window opened.
    assert times["send_email"][0] - started < timedelta(minutes=1)
    assert len(times["send_sms"]) == 2
    assert times["send_sms"][0] - started < timedelta(minutes=1)
    assert morning <= times["send_sms"][1] < morning + timedelta(minutes=1)


@pytest.mark.parametrize("tag", ["fallback", "off"])
async def test_account_zone_fallback_and_quiet_hours_off(
    skipping_env: WorkflowEnvironment, sqlite_db: Database, plivo_server: FakePlivo,
    smtp_server: SmtpSink, uid: str, tag: str,
) -> None:
    now = await skipping_env.get_current_time()
    night = zone_at_local_hour(now, range(1, 3))
    case = Case(skipping_env, sqlite_db, plivo_server, smtp_server, uid, tag[:2])
    case.setup(schedule="0s", grace="1d", zones="Etc/Unknown", account_zone=night.key,
               quiet_hours=WINDOW if tag == "fallback" else "off")
    result, _status, started, times = await case.run()
    assert result["sms_sent"] == 1 and case.sms_count() == 1
    sent_at = times["send_sms"][-1]
    if tag == "fallback":  # the number's zone is unknown: the account's zone applies
        assert sent_at.astimezone(night).strftime("%H:%M") == "08:00"
        assert sent_at - started > timedelta(hours=4)
    else:  # `off`: any hour
        assert times["send_sms"] == [sent_at]
        assert sent_at - started < timedelta(minutes=1)


async def test_only_the_latest_due_sms_is_sent(
    skipping_env: WorkflowEnvironment, sqlite_db: Database, plivo_server: FakePlivo,
    smtp_server: SmtpSink, uid: str,
) -> None:
    now = await skipping_env.get_current_time()
    night = zone_at_local_hour(now, range(1, 3))
    case = Case(skipping_env, sqlite_db, plivo_server, smtp_server, uid, "l")
    # Three steps due at about 01:00-05:00 local; the window opens at 08:00.
    case.setup(schedule="0s,1h,2h", grace="1d", zones=night.key)
    result, status, started, times = await case.run()
    assert result == {"outcome": "exhausted", "emails_sent": 3, "sms_sent": 1,
                      "credits_spent": 1}
    assert sms_statuses(status) == [
        ("skipped", "a later reminder was already due"),
        ("skipped", "a later reminder was already due"),
        ("sent", ""),
    ]
    assert (case.sms_count(), case.email_count()) == (1, 3)
    assert times["send_sms"][-1].astimezone(night).strftime("%H:%M") == "08:00"
    # Each email went out when its step was due, quiet hours or not.
    for step, when in enumerate(times["send_email"]):
        assert abs(when - (started + timedelta(hours=step))) < timedelta(minutes=1)


async def test_the_schedule_ends_before_the_window_opens(
    skipping_env: WorkflowEnvironment, sqlite_db: Database, plivo_server: FakePlivo,
    smtp_server: SmtpSink, uid: str,
) -> None:
    now = await skipping_env.get_current_time()
    night = zone_at_local_hour(now, range(1, 3))
    case = Case(skipping_env, sqlite_db, plivo_server, smtp_server, uid, "e")
    case.setup(schedule="0s", grace="1h", zones=night.key)
    result, status, _started, _times = await case.run()
    assert result["outcome"] == "exhausted"
    assert (result["emails_sent"], result["sms_sent"]) == (1, 0)
    assert sms_statuses(status) == [("skipped", "the schedule ended before it could be sent")]
    assert case.sms_count() == 0
