"""SMS providers: Plivo (the real SDK) and a console backend that prints and sends nothing."""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import requests

from dunning.domain.pii import redact_urls
from dunning.platform.providers import (
    AmbiguousProviderError,
    PermanentProviderError,
    TransientProviderError,
    mask_phone,
)

log = logging.getLogger("dunning.sms")


@dataclass(frozen=True)
class OutgoingSms:
    src: str
    dst: str
    text: str
    callback_url: str | None = None


class SmsProvider(Protocol):
    name: str

    def send(self, sms: OutgoingSms) -> str:
        """Hand the message to the provider; return its message id. Raises a ProviderError."""
        ...


@dataclass(frozen=True)
class SentSms:
    """One outbound message in the provider's own records."""

    message_uuid: str
    sent_at: datetime  # UTC
    state: str = ""


class SmsRecords(Protocol):
    """A provider that can say which messages it took (to settle an ambiguous send)."""

    def outbound_since(self, src: str, dst: str, since: datetime) -> list[SentSms]:
        """Outbound messages from `src` to `dst` taken at or after `since`, oldest first.
        Raises a ProviderError (TransientProviderError when it cannot tell now)."""
        ...


def has_records(provider: object) -> bool:
    """Whether the provider can list the messages it took (see SmsRecords)."""
    return callable(getattr(provider, "outbound_since", None))


class ConsoleSmsProvider:
    """Prints each message (number masked; numbers, addresses and link paths in the text
    masked too) and remembers it; sends nothing."""

    name = "console"

    def __init__(self, echo: bool = True) -> None:
        self._lock = threading.Lock()
        self._count = 0
        self.echo = echo
        self.sent: list[OutgoingSms] = []
        self._records: list[tuple[OutgoingSms, SentSms]] = []

    def outbound_since(self, src: str, dst: str, since: datetime) -> list[SentSms]:
        with self._lock:
            return [r for m, r in self._records
                    if m.src == src and m.dst == dst and r.sent_at >= since]

    def send(self, sms: OutgoingSms) -> str:
        with self._lock:
            self._count += 1
            self.sent.append(sms)
            msg_id = f"console-{self._count}"
            self._records.append((sms, SentSms(msg_id, datetime.now(UTC), "sent")))
        if self.echo:
            # Masked: the text holds a billing link, maybe a number or an address.
            print(f"[sms {msg_id}] to {mask_phone(sms.dst)}: {redact_urls(sms.text)}",
                  flush=True)
        return msg_id


def set_plivo_api_url(base_url: str) -> None:
    """The one place that points the Plivo SDK at another API base (DUNNING_PLIVO_API_URL).

    plivo 4.x has no constructor option for it: every request re-reads the module constant
    `plivo.rest.client.PLIVO_API_BASE_URI`, so we set that (and `PLIVO_API`) process-wide.
    """
    import plivo.rest.client as plivo_client

    base = base_url.rstrip("/")
    plivo_client.PLIVO_API = base
    plivo_client.PLIVO_API_BASE_URI = f"{base}/v1/Account"


class PlivoSmsProvider:
    name = "plivo"

    def __init__(
        self, auth_id: str, auth_token: str, api_url: str, timeout: float = 10.0
    ) -> None:
        import plivo

        set_plivo_api_url(api_url)
        self._auth_id = auth_id
        self._auth_token = auth_token
        self._timeout = timeout
        self._local = threading.local()
        self._plivo = plivo

    def _client(self) -> object:
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._plivo.RestClient(self._auth_id, self._auth_token, timeout=self._timeout)
            self._local.client = client
        return client

    def send(self, sms: OutgoingSms) -> str:
        from plivo import exceptions as pe

        client = self._client()
        kwargs: dict[str, str] = {}
        if sms.callback_url:
            kwargs = {"url": sms.callback_url, "method": "POST"}
        try:
            resp = client.messages.create(  # type: ignore[attr-defined]
                src=sms.src.lstrip("+"), dst=sms.dst.lstrip("+"), text=sms.text, **kwargs
            )
        except requests.exceptions.ReadTimeout as exc:
            raise AmbiguousProviderError(f"timeout waiting for Plivo's answer: {exc}") from None
        except requests.ConnectionError as exc:
            if "Connection aborted" in str(exc):
                # The request went out and the connection dropped before an answer.
                raise AmbiguousProviderError(f"Plivo dropped the connection: {exc}") from None
            raise TransientProviderError(f"cannot reach Plivo: {type(exc).__name__}") from None
        except requests.RequestException as exc:
            raise TransientProviderError(f"HTTP error talking to Plivo: {exc}") from None
        except pe.PlivoServerError as exc:
            raise TransientProviderError(f"Plivo server error: {exc}") from None
        except (
            pe.ValidationError,
            pe.AuthenticationError,
            pe.ForbiddenError,
            pe.ResourceNotFoundError,
            pe.InvalidRequestError,
        ) as exc:
            raise PermanentProviderError(f"Plivo refused the message: {exc}") from None
        except pe.PlivoRestError as exc:
            # 429, 502, 503, ...: the SDK's only clue is the message text.
            text = str(exc)
            match = re.search(r"status code (\d{3})", text)
            code = int(match.group(1)) if match else 0
            if code == 429 or code >= 500 or code == 0:
                raise TransientProviderError(f"Plivo unavailable: {text[:200]}") from None
            raise PermanentProviderError(f"Plivo refused the message: {text[:200]}") from None
        uuids = getattr(resp, "message_uuid", None) or []
        if isinstance(uuids, str):
            uuids = [uuids]
        msg_id = str(uuids[0]) if uuids else ""
        log.info("sms handed to plivo to=%s uuid=%s", mask_phone(sms.dst), msg_id)
        return msg_id

    def outbound_since(self, src: str, dst: str, since: datetime) -> list[SentSms]:
        """Plivo's message list (outbound, from `src` to `dst`, message_time >= since), all
        pages of 20, oldest first."""
        from plivo import exceptions as pe

        client = self._client()
        found: list[SentSms] = []
        offset = 0
        gte = since.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
        while True:
            try:
                page = client.messages.list(  # type: ignore[attr-defined]
                    message_direction="outbound", from_number=src.lstrip("+"),
                    to_number=dst.lstrip("+"), message_time__gte=gte, limit=PAGE, offset=offset,
                )
            except (requests.RequestException, pe.PlivoRestError) as exc:
                raise TransientProviderError(
                    f"cannot read Plivo's message list: {type(exc).__name__}"
                ) from None
            objects = list(getattr(page, "objects", None) or [])
            for obj in objects:
                record = _sent_record(obj)
                if record is not None and record.sent_at >= since - timedelta(seconds=1):
                    found.append(record)
            meta = getattr(page, "meta", None)
            more = _meta_next(meta)
            if not more or len(objects) < PAGE or offset >= MAX_LISTED:
                break
            offset += PAGE
        return sorted(found, key=lambda r: r.sent_at)


PAGE = 20  # plivo 4.63 validates 0 < limit <= 20
MAX_LISTED = 1000  # a reminder's number never takes this many messages in a settling window


def _meta_next(meta: Any) -> bool:
    if meta is None:
        return False
    value = meta.get("next") if isinstance(meta, dict) else getattr(meta, "next", None)
    return bool(value)


def _sent_record(obj: Any) -> SentSms | None:
    """A message object of Plivo's list; None when it has no usable uuid or time."""
    uuid = str(getattr(obj, "message_uuid", "") or "")
    raw = str(getattr(obj, "message_time", "") or "")
    if not uuid or not raw:
        return None
    try:
        when = datetime.fromisoformat(raw.replace(" ", "T", 1))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return SentSms(uuid, when.astimezone(UTC), str(getattr(obj, "message_state", "") or ""))
