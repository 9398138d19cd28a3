"""The API process's webhook thread: every ``GIF_WEBHOOK_POLL_INTERVAL_S`` it plans the
deliveries of new status changes and sends the due ones, a few at a time, each attempt
bounded by ``GIF_WEBHOOK_TIMEOUT_S``. Redirects are not followed (a 3xx is a failed attempt):
following one would reach a host the address check never saw."""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx
from sqlalchemy.orm import Session, sessionmaker

from service.db.models import utcnow
from service.settings import Settings
from service.webhooks import outbox
from service.webhooks.addresses import AddressRefused, check_resolved
from service.webhooks.signing import owner_secret, signed_headers

logger = logging.getLogger("service.webhooks")

SEND_THREADS = 4  # one slow receiver does not hold up the others' deliveries
USER_AGENT = "gif-service-webhooks/1"


@dataclass
class WebhookSender:
    """``tick()`` runs one pass; ``start()`` runs passes in a daemon thread until ``close()``."""

    factory: sessionmaker[Session]
    settings: Settings
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _pool: ThreadPoolExecutor | None = None
    _client: httpx.Client | None = None

    @property
    def lease_s(self) -> float:
        """How long a claimed attempt may take before another process may send it again."""
        return self.settings.webhook_timeout_s + 30.0

    def tick(self) -> int:
        """Plan, then send every due delivery; returns the number of attempts made."""
        outbox.plan(self.factory)
        due = outbox.claim_due(self.factory, self.lease_s)
        if self._pool is None:
            for item in due:
                self._attempt(item)
        else:
            list(self._pool.map(self._attempt, due))
        return len(due)

    def _attempt(self, due: outbox.Due) -> str:
        at = utcnow()
        started = time.perf_counter()
        outcome: dict[str, Any] = {"at": at.isoformat(), "status_code": None, "error": None}
        retry = True
        try:
            check_resolved(due.url, self.settings.webhook_allow_private)
            with self.factory() as session:
                secret = owner_secret(session, due.owner_id)
            headers = {
                **signed_headers(secret, due.id, at, due.body),
                "content-type": "application/json",
                "user-agent": USER_AGENT,
            }
            response = self._http().post(due.url, content=due.body.encode(), headers=headers)
            outcome["status_code"] = response.status_code
            if not response.is_success:
                outcome["error"] = f"the receiver answered {response.status_code}"
        except AddressRefused as err:
            outcome["error"], retry = str(err), False
        except httpx.HTTPError as err:
            outcome["error"] = f"{type(err).__name__}: {err}"[: outbox.MAX_ERROR_CHARS]
        outcome["duration_ms"] = round((time.perf_counter() - started) * 1000.0, 1)
        status = outbox.record(
            self.factory, due, outcome, max_attempts=self.settings.webhook_max_attempts,
            retry_base_s=self.settings.webhook_retry_base_s, retry=retry,
        )
        logger.info("webhook %s attempt %d: %s (%s)", due.id, due.attempt, status,
                    outcome["status_code"] or outcome["error"])
        return status

    def _http(self) -> httpx.Client:
        if self._client is None:
            self._client = httpx.Client(
                timeout=self.settings.webhook_timeout_s, follow_redirects=False, trust_env=False
            )
        return self._client

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:  # noqa: BLE001 - a database hiccup must not end the thread
                logger.warning("webhook pass failed", exc_info=True)
            self._stop.wait(self.settings.webhook_poll_interval_s)

    def start(self) -> WebhookSender:
        self._pool = ThreadPoolExecutor(SEND_THREADS, thread_name_prefix="gif-webhook-send")
        self._thread = threading.Thread(target=self._run, name="gif-webhooks", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.settings.webhook_timeout_s + 5.0)
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        if self._client is not None:
            self._client.close()
