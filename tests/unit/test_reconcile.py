"""The rule that settles an ambiguous SMS from the provider's records (dunning.messages.reconcile),
without I/O: found -> sent, not found -> wait then resend once, several claims to one number are
never mistaken for each other."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from dunning.messages.reconcile import decide
from dunning.platform.providers.sms import SentSms

T0 = datetime(2026, 11, 29, 8, 0, 0, tzinfo=UTC)
SETTLE = timedelta(seconds=12)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_found_in_the_list_is_sent_with_its_uuid() -> None:
    d = decide(1, at(0), [(1, at(0))], [SentSms("u1", at(0.3))], set(), at(1), SETTLE)
    assert (d.action, d.provider_id) == ("sent", "u1")


def test_naive_database_times_are_utc() -> None:
    naive = at(0).replace(tzinfo=None)
    d = decide(1, naive, [(1, naive)], [SentSms("u1", at(0.3))], set(), at(1), SETTLE)
    assert d.action == "sent"


def test_not_found_waits_for_the_settling_window_then_resends() -> None:
    early = decide(1, at(0), [(1, at(0))], [], set(), at(5), SETTLE)
    assert early.action == "wait" and early.delay == timedelta(seconds=7)
    late = decide(1, at(0), [(1, at(0))], [], set(), at(13), SETTLE)
    assert late.action == "resend"


def test_a_message_before_the_claim_or_already_recorded_is_not_ours() -> None:
    older = SentSms("old", at(-30))
    recorded = SentSms("other", at(0.5))
    d = decide(1, at(0), [(1, at(0))], [older, recorded], {"other"}, at(20), SETTLE)
    assert d.action == "resend"


def test_two_claims_to_one_number_both_sent_pair_in_order() -> None:
    claims = [(1, at(0)), (2, at(0.2))]
    records = [SentSms("u2", at(0.4)), SentSms("u1", at(0.1))]
    first = decide(1, at(0), claims, records, set(), at(20), SETTLE)
    second = decide(2, at(0.2), claims, records, set(), at(20), SETTLE)
    assert (first.provider_id, second.provider_id) == ("u1", "u2")


def test_two_claims_one_message_is_not_guessed() -> None:
    """Two cases of one customer claimed together, one message at the provider: which one went
    out cannot be told from the list, so neither is taken as sent nor resent yet."""
    claims = [(1, at(0)), (2, at(0.2))]
    records = [SentSms("u?", at(0.3))]
    for row, claimed in claims:
        d = decide(row, claimed, claims, records, set(), at(20), SETTLE)
        assert d.action == "wait", d
    final = decide(2, at(0.2), claims, records, set(), at(60), SETTLE)
    assert final.action == "unknown" and "cannot be told apart" in final.reason


def test_once_a_delivery_report_named_the_other_row_the_rest_is_clear() -> None:
    # Row 1's report adopted "u1" (it is no longer an open claim, its uuid is taken).
    d = decide(2, at(0.2), [(2, at(0.2))], [SentSms("u1", at(0.3))], {"u1"}, at(20), SETTLE)
    assert d.action == "resend"


def test_two_claims_no_message_resend_after_the_window() -> None:
    claims = [(1, at(0)), (2, at(0.2))]
    assert decide(1, at(0), claims, [], set(), at(20), SETTLE).action == "resend"
