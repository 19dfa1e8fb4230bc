"""register_case and finish_case (one upsert each way, on both databases): what a case tells about
its customer is kept, what it leaves out is not erased, and repeating a call changes nothing."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from temporalio.testing import ActivityEnvironment

from activities import DunningActivities
from dunning.credits import ledger
from dunning.domain.contract import CasePlan, FinishCaseRequest, RegisterCaseRequest
from dunning.platform.db import Database
from dunning.platform.db.models import Case, Customer
from dunning.platform.providers.email import ConsoleEmailProvider
from dunning.platform.providers.sms import ConsoleSmsProvider
from tests.helpers import add_customer, make_account

NOW = datetime(2026, 1, 31, 9, 0, tzinfo=UTC)


def _acts(db: Database) -> DunningActivities:
    return DunningActivities(db, ConsoleSmsProvider(echo=False), ConsoleEmailProvider(echo=False))


def test_register_case_upserts_the_customer_and_the_case_once(db: Database, uid: str) -> None:
    account = f"bk-{uid}"
    make_account(db, account, schedule="0s,1d", grace="2d")
    add_customer(db, account, "known", email="old@example.com", name="Old Name", plan="pro")
    acts, env = _acts(db), ActivityEnvironment()

    def register(wid: str, customer: str, **extra: Any) -> CasePlan:
        return env.run(acts.register_case, RegisterCaseRequest(
            f"{wid}-{uid}", account, customer, "inv1", 4900, "USD", NOW, **extra))

    plan = register("w1", "known")
    assert register("w1", "known") == plan  # a retried local activity changes nothing
    assert plan.offsets == [0, 86400] and plan.grace_seconds == 2 * 86400
    register("w2", "known", customer_email="new@example.com", plan="basic")
    register("w3", "fresh", customer_name="Fresh Face")
    with db.session() as s:
        known = s.get(Customer, (account, "known"))
        fresh = s.get(Customer, (account, "fresh"))
        cases = s.query(Case).filter(Case.account_id == account).all()
    assert known is not None and fresh is not None
    assert (known.email, known.name, known.plan, known.source) == (
        "new@example.com", "Old Name", "basic", "test")
    assert known.phone_e164 == "+14155552671"  # imported data a case does not mention stays
    assert (fresh.email, fresh.name, fresh.plan, fresh.source) == (None, "Fresh Face", None, "case")
    assert sorted(c.workflow_id for c in cases) == [f"w{i}-{uid}" for i in (1, 2, 3)]
    assert {c.state for c in cases} == {"active"}

    missing = env.run(acts.register_case, RegisterCaseRequest(
        f"w4-{uid}", f"nope-{uid}", "c", "inv", 1, "USD", NOW))
    assert missing.error and "unknown account" in missing.error and missing.offsets == []


def test_finish_case_records_the_outcome_and_leaves_the_queue(db: Database, uid: str) -> None:
    account, wid = f"bk2-{uid}", f"dunning-bk2-{uid}-inv1"
    make_account(db, account, balance=0)
    add_customer(db, account, "c1")
    acts, env = _acts(db), ActivityEnvironment()
    env.run(acts.register_case, RegisterCaseRequest(wid, account, "c1", "inv1", 4900, "USD", NOW))
    with db.session() as s:
        ledger.add_waiter(s, account, wid, 1)
    env.run(acts.finish_case, FinishCaseRequest(
        wid, account, "recovered", 2, 1, 1, NOW, recovered_amount=4900, last_channel="sms"))
    with db.session() as s:
        case = s.get(Case, wid)
        assert ledger.waiters(s, account) == []
    assert case is not None
    assert (case.state, case.emails_sent, case.sms_sent, case.credits_spent,
            case.recovered_amount, case.last_channel) == ("recovered", 2, 1, 1, 4900, "sms")
    assert case.ended_at is not None


def test_register_case_brings_the_campaign_snapshot_when_asked(db: Database, uid: str) -> None:
    """Patch `batched-bookkeeping`: the campaign snapshot rides on register_case (one local
    activity and transaction instead of two), the same snapshot `campaign_for_case` gives."""
    from dunning.cases.campaigns import CampaignInput, case_snapshot, set_campaign

    account = f"bkc-{uid}"
    make_account(db, account, schedule="0s,1d", grace="2d")
    add_customer(db, account, "c1", plan="gold")
    with db.session() as s:
        set_campaign(s, account, "gold", CampaignInput("0s,2h", "1h", "1", "mark-uncollectible"))
    acts, env = _acts(db), ActivityEnvironment()
    plain = env.run(acts.register_case, RegisterCaseRequest(
        f"w1-{uid}", account, "c1", "inv1", 4900, "USD", NOW))
    assert plain.campaign is None  # not asked: the old path takes its own local activity
    plan = env.run(acts.register_case, RegisterCaseRequest(
        f"w2-{uid}", account, "c1", "inv2", 4900, "USD", NOW, with_campaign=True))
    assert plan.campaign is not None and plan.campaign.found
    assert (plan.campaign.plan, plan.campaign.offsets, plan.campaign.grace_seconds,
            plan.campaign.sms_steps, plan.campaign.on_exhausted) == (
        "gold", [0, 7200], 3600, [1], "mark-uncollectible")
    with db.session() as s:
        assert plan.campaign == case_snapshot(s, account, "c1", None)
