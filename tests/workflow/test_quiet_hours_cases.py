"""Quiet hours, whole cases on the time-skipping server with the real activities (SQLite, the
Plivo fake, the SMTP sink): an SMS due at night waits for the morning while the email goes out,
the account's zone is the fallback, only the latest due step is sent, the schedule's end wins over
a late window. The window arithmetic itself is unit-tested in tests/unit/test_quiet_hours.py.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from dunning.domain.quiet_hours import next_allowed
from dunning.platform.db import Database
from dunning.platform.db.models import Account
from tests.fakes.plivo import FakePlivo
from tests.fakes.smtp import SmtpSink
from tests.helpers import add_customer, case_input, make_account, real_activities, running_worker

WINDOW = "08:00-21:00"

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
