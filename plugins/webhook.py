"""Built-in plugin: POST every incident change as JSON to a webhook.

Settings (``[plugins.webhook]``)::

    url = "https://hooks.example.com/opstrata"   # no url: the plugin registers nothing
    secret = "s3cret"        # sign each body: X-Opstrata-Signature: sha256=<hex HMAC-SHA256>
    timeout_seconds = 10
    max_attempts = 5         # retries with exponential back-off on errors and 5xx/429
    backoff_seconds = 0.5

The body is ``{"change": "opened", "incident": {...}, "sent_at_unix_nano": ...}``; the header
``X-Opstrata-Event`` repeats the change and ``X-Opstrata-Delivery`` identifies the delivery
(the same on every retry, for receivers that deduplicate).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import time
from collections.abc import Callable
from typing import Any

import httpx
import msgspec

from opstrata.alerts import IncidentChange
from opstrata.hookspecs import hookimpl
from opstrata.settings import Settings

SIGNATURE_HEADER = "X-Opstrata-Signature"


class WebhookConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    url: str = ""
    secret: str = ""
    timeout_seconds: float = 10.0
    max_attempts: int = 5
    backoff_seconds: float = 0.5


class WebhookPayload(msgspec.Struct, frozen=True):
    change: str
    incident: Any
    sent_at_unix_nano: int


def sign(secret: str, body: bytes) -> str:
    """The signature header value for ``body``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class WebhookNotifier:
    name = "webhook"

    def __init__(self, config: WebhookConfig) -> None:
        self.config = config
        self._client = httpx.Client(timeout=config.timeout_seconds)
        self._encode = msgspec.json.Encoder().encode

    def notify(self, change: IncidentChange) -> None:
        body = self._encode(WebhookPayload(change.change, change.incident, time.time_ns()))
        headers = {
            "content-type": "application/json",
            "x-opstrata-event": change.change,
            "x-opstrata-delivery": os.urandom(8).hex(),
        }
        if self.config.secret:
            headers[SIGNATURE_HEADER] = sign(self.config.secret, body)
        delay = self.config.backoff_seconds
        for attempt in range(1, self.config.max_attempts + 1):
            try:
                reply = self._client.post(self.config.url, content=body, headers=headers)
                if reply.status_code < 500 and reply.status_code != 429:
                    reply.raise_for_status()
                    return
                problem = f"HTTP {reply.status_code}"
            except httpx.HTTPStatusError:
                raise
            except httpx.HTTPError as exc:
                problem = str(exc) or type(exc).__name__
            if attempt == self.config.max_attempts:
                raise RuntimeError(f"gave up after {attempt} attempts: {problem}")
            time.sleep(delay)
            delay *= 2


_config = WebhookConfig()


@hookimpl
def opstrata_configure(config: dict[str, Any], settings: Settings) -> None:
    global _config
    try:
        _config = msgspec.convert(config, WebhookConfig)
    except msgspec.ValidationError as exc:
        raise ValueError(f"plugins.webhook: {exc}") from exc


@hookimpl
def opstrata_register_notifiers(register: Callable[[WebhookNotifier], None]) -> None:
    if _config.url:
        register(WebhookNotifier(_config))
