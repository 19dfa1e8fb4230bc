"""The Plivo provider reads Plivo's message list with the real SDK (paged by 20, filtered by
direction, sender, number and time), against the loopback Plivo that keeps one like Plivo's."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from dunning.platform.providers.sms import OutgoingSms, PlivoSmsProvider
from tests.fakes.plivo import FakePlivo


def test_outbound_since_reads_every_page_and_filters(plivo_server: FakePlivo, uid: str) -> None:
    plivo_server.reset()
    provider = PlivoSmsProvider(plivo_server.auth_id, plivo_server.auth_token, plivo_server.url)
    start = datetime.now(UTC) - timedelta(seconds=1)
    dst = f"+1415558{int(uid[:4], 16) % 1000:03d}1"
    other = f"+1415558{int(uid[:4], 16) % 1000:03d}2"
    sent = [provider.send(OutgoingSms("+14155550100", dst, f"n{i}")) for i in range(45)]
    provider.send(OutgoingSms("+14155550100", other, "not this number"))
    provider.send(OutgoingSms("+14155550199", dst, "not this sender"))
    before = plivo_server.list_requests
    found = provider.outbound_since("+14155550100", dst, start)
    assert [r.message_uuid for r in found] == sent  # oldest first, all 3 pages
    assert plivo_server.list_requests - before == 3
    assert all(r.sent_at >= start for r in found)
    assert provider.outbound_since("+14155550100", dst, datetime.now(UTC) + timedelta(seconds=5)) \
        == []
    plivo_server.reset()
