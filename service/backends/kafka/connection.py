"""Broker reachability: a start-up probe, error watching, and librdkafka's log without floods.

librdkafka retries a broker it cannot reach every few hundred milliseconds and reports each
attempt twice, through ``error_cb`` and through its log (stderr unless a ``logger`` is
configured): about 100 identical lines per client every 5 seconds. This module turns that
into a few lines a person can act on:

* :func:`probe_brokers` asks the cluster for metadata until it answers or ``timeout`` runs
  out, then raises one :class:`~service.errors.BrokerUnavailableError` naming the bootstrap
  servers and the cause (connection refused, DNS, TLS, timeout) with the count of failed
  attempts, or :class:`~service.errors.AuthenticationError` at once when the brokers refuse
  the credentials. Nothing reaches stderr meanwhile (the attempts are logged at DEBUG).
* :class:`ConnectionWatch` is a client's ``error_cb``: it logs the first transport error
  and then, instead of one line per repeat, a summary with a count at most once per
  ``summary_interval``, and the recovery with the number of errors seen while down.
* :func:`librdkafka_logger` is the object to pass as librdkafka's ``logger`` setting: the
  library's log lines go to the ``librdkafka`` Python logger, each distinct line once, its
  repeats collapsed into a periodic summary with a count.

Repeats are recognised after removing what changes from one attempt to the next (``after
3ms in state CONNECT``, ``1/3 brokers are down``).
"""

from __future__ import annotations

import enum
import logging
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient

from service.backends.kafka.errors import TRANSIENT_CODES
from service.errors import AuthenticationError, BrokerUnavailableError

__all__ = [
    "Cause",
    "ConnectionWatch",
    "LibrdkafkaLogger",
    "RepeatCollapser",
    "classify",
    "librdkafka_logger",
    "probe_brokers",
]

logger = logging.getLogger(__name__)

SUMMARY_INTERVAL = 60.0  # seconds between two summaries of the same repeated line
_KEY_LIMIT = 1000  # distinct lines remembered; beyond, new lines are logged every time
_AUTH_CODES = frozenset({KafkaError._AUTHENTICATION, KafkaError.SASL_AUTHENTICATION_FAILED})
_BROKER_PREFIX = re.compile(r"^\S+/\w+: ")  # "[proto://]host:port/<id or bootstrap>: "
_VARYING = (
    (re.compile(r"\s*\(after \d+ms in state [A-Z_]+\)"), ""),
    (re.compile(r"\b\d+/\d+ brokers"), "N/N brokers"),
    (re.compile(r"\b\d+ms\b"), "Nms"),
)


class Cause(enum.Enum):
    """Why a broker could not be reached, as a person would name it."""

    REFUSED = "connection refused"
    DNS = "DNS: host name not resolved"
    TLS = "TLS handshake failed"
    AUTHENTICATION = "authentication failed"
    TIMEOUT = "connection timed out"
    TRANSPORT = "transport failure"


_HINTS = {
    Cause.REFUSED: "check kafka.bootstrap_servers (host and port) and that the brokers are up",
    Cause.DNS: "check the host names in kafka.bootstrap_servers",
    Cause.TLS: "check security.protocol and the ssl.* settings under kafka.client "
    "(is the port a TLS listener?)",
    Cause.AUTHENTICATION: "check sasl.mechanism, sasl.username and sasl.password under "
    "kafka.client",
    Cause.TIMEOUT: "check kafka.bootstrap_servers, firewalls and that the brokers are up",
    Cause.TRANSPORT: "check kafka.bootstrap_servers and that the brokers are up",
}


def classify(error: KafkaError) -> Cause | None:
    """The cause of a connection error, or ``None`` if ``error`` is not about connecting.

    Decided from librdkafka's error code first, then from its text (a TLS failure and a
    refused connection share the code ``_TRANSPORT``).
    """
    code, text = error.code(), _reason(error.str() or "").lower()  # "ssl://host" says nothing
    if code in _AUTH_CODES:
        return Cause.AUTHENTICATION
    if code == KafkaError._RESOLVE or "failed to resolve" in text:
        return Cause.DNS
    if "connection refused" in text:
        return Cause.REFUSED
    if code == KafkaError._SSL or "ssl" in text or "tls" in text:
        return Cause.TLS
    if "sasl" in text and "authentication" in text:
        return Cause.AUTHENTICATION
    if code == KafkaError._ALL_BROKERS_DOWN:
        return None  # a consequence, not a cause
    if "timed out" in text or code in (KafkaError._TIMED_OUT, KafkaError.REQUEST_TIMED_OUT):
        return Cause.TIMEOUT
    if code in TRANSIENT_CODES:
        return Cause.TRANSPORT
    return None


def _normalised(text: str) -> str:
    for pattern, replacement in _VARYING:
        text = pattern.sub(replacement, text)
    return text


@dataclass
class _Repeats:
    count: int = 0
    last_text: str = ""


class RepeatCollapser:
    """Logs each distinct line once, then its repeats as one summary line with a count.

    A repeat is counted, not logged; when ``interval`` seconds have passed since the last
    summary, the next line (or :meth:`flush`) logs one summary per repeated line:
    ``<line> (repeated 95 times in 60s)``. Thread-safe.

    Args:
        target: where the lines go.
        interval: seconds between summaries.
        clock: the time source (monotonic seconds); tests pass a fake one.
    """

    def __init__(
        self,
        target: logging.Logger,
        interval: float = SUMMARY_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._target = target
        self._interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        self._seen: dict[tuple[int, str], _Repeats] = {}
        self._since = clock()

    def log(self, level: int, text: str, key: str | None = None) -> None:
        """Log ``text`` if its ``key`` (default: ``text`` without varying parts) is new."""
        key = _normalised(text) if key is None else key
        with self._lock:
            repeats = self._seen.get((level, key))
            if repeats is None:
                if len(self._seen) < _KEY_LIMIT:
                    self._seen[(level, key)] = _Repeats()
                self._target.log(level, "%s", text)
            else:
                repeats.count += 1
                repeats.last_text = text
            if self._clock() - self._since >= self._interval:
                self._flush_locked()

    @property
    def is_empty(self) -> bool:
        """Whether no line is remembered (nothing logged since the last :meth:`reset`)."""
        return not self._seen

    def flush(self) -> int:
        """Log the summaries of the repeats counted so far; returns the repeats summarised."""
        with self._lock:
            return self._flush_locked()

    def reset(self) -> int:
        """Flush, then forget every line: the next occurrence of each is logged again."""
        with self._lock:
            summarised = self._flush_locked()
            self._seen.clear()
            return summarised

    def _flush_locked(self) -> int:
        elapsed = self._clock() - self._since
        total = 0
        for (level, _key), repeats in self._seen.items():
            if repeats.count:
                self._target.log(
                    level,
                    "%s (repeated %d times in %.0fs)",
                    repeats.last_text,
                    repeats.count,
                    elapsed,
                )
                total += repeats.count
                repeats.count = 0
        self._since = self._clock()
        return total


class LibrdkafkaLogger:
    """librdkafka's ``logger`` setting: its log lines into Python logging, repeats collapsed.

    confluent-kafka calls :meth:`log` from ``poll()``/``flush()``/``consume()`` with a
    Python level, a format and ``(facility, client name, text)``; the line is logged as
    ``<facility> <text>`` on ``target`` (the ``librdkafka`` logger by default). With
    ``quiet``, every line is logged at DEBUG (used by the probe, which reports the cause
    itself).
    """

    def __init__(
        self,
        target: logging.Logger | None = None,
        *,
        quiet: bool = False,
        interval: float = SUMMARY_INTERVAL,
    ) -> None:
        self._quiet = quiet
        self.collapser = RepeatCollapser(target or logging.getLogger("librdkafka"), interval)

    def log(self, level: int, fmt: str, *args: Any, **_kwargs: Any) -> None:
        """Take one librdkafka log line (the signature of :meth:`logging.Logger.log`)."""
        if len(args) == 3:  # (facility, client name, text): the client name is noise
            facility, _client, text = args
            line = f"{facility} {text}"
        else:
            line = fmt % args if args else fmt
        self.collapser.log(logging.DEBUG if self._quiet else level, line)


_SHARED_LOGGER: LibrdkafkaLogger | None = None
_SHARED_LOCK = threading.Lock()


def librdkafka_logger() -> LibrdkafkaLogger:
    """The process-wide librdkafka ``logger``: pass it in every client's configuration."""
    global _SHARED_LOGGER  # one collapse state for every client
    with _SHARED_LOCK:
        if _SHARED_LOGGER is None:
            _SHARED_LOGGER = LibrdkafkaLogger()
        return _SHARED_LOGGER


class ConnectionWatch:
    """A client's ``error_cb``: logs reachability changes, collapses repeats, keeps fatals.

    * A fatal or authentication error is remembered in :attr:`fatal` and logged at ERROR.
    * The first transport error marks the broker down and is logged (WARNING) with its
      cause; further ones are counted, and summarised with the count at most once per
      ``summary_interval`` seconds.
    * Any other error is logged once per distinct text, its repeats summarised likewise.
    * :meth:`reachable` marks the broker up again and logs the recovery with the number of
      errors seen meanwhile.

    Args:
        name: what the client serves, e.g. ``queue 'payments'``; it starts every line.
        summary_interval: seconds between two summaries of repeated errors.
    """

    def __init__(self, name: str, summary_interval: float = SUMMARY_INTERVAL) -> None:
        self._name = name
        self._down = False
        self._errors_while_down = 0
        self._collapser = RepeatCollapser(logger, summary_interval)
        self.fatal: KafkaError | None = None
        self.cause: Cause | None = None
        """The cause of the last connection error, kept after recovery for reports."""

    def on_error(self, error: KafkaError) -> None:
        """Serve as librdkafka's ``error_cb``."""
        cause = classify(error)
        if cause is not None:
            self.cause = cause
        if error.fatal() or error.code() in _AUTH_CODES:
            self.fatal = error
            self._collapser.log(logging.ERROR, f"{self._name}: {error.name()}: {error.str()}")
        elif error.code() in TRANSIENT_CODES:
            self._down = True
            self._errors_while_down += 1
            what = f" ({cause.value})" if cause is not None else ""
            text = f"{self._name}: broker unreachable{what}, retrying: {error.str()}"
            self._collapser.log(logging.WARNING, text, key="down")  # once, then summaries
        else:
            self._collapser.log(logging.WARNING, f"{self._name}: {error.name()}: {error.str()}")

    @property
    def is_down(self) -> bool:
        """Whether the last news was a transport error."""
        return self._down

    def reachable(self) -> None:
        """Note that the broker answered (warnings may be repeated again from now on).

        Cheap when nothing was reported: callers may call it for every delivered record.
        """
        if not self._down and self._collapser.is_empty:
            return
        self._collapser.reset()
        if self._down:
            self._down = False
            logger.warning(
                "%s: broker reachable again (after %d connection error(s))",
                self._name,
                self._errors_while_down,
            )
            self._errors_while_down = 0


class _ProbeErrors:
    """The probe's ``error_cb``: the last cause, its text, and the failed attempts."""

    def __init__(self) -> None:
        self.cause: Cause | None = None
        self.detail = ""
        self.attempts = 0
        self.authentication: KafkaError | None = None

    def on_error(self, error: KafkaError) -> None:
        logger.debug("probe: %s: %s", error.name(), error.str())
        cause = classify(error)
        if cause is Cause.AUTHENTICATION or error.fatal():
            self.authentication = error
        if cause is not None:
            self.attempts += 1
            self.cause, self.detail = cause, _reason(error.str() or "")


def _reason(text: str) -> str:
    """The reason in an error text, without the broker prefix and timing.

    ``ssl://127.0.0.1:9/bootstrap: Connect to ipv4#127.0.0.1:9 failed: Connection refused
    (after 0ms in state CONNECT)`` -> ``Connect to ipv4#127.0.0.1:9 failed: Connection
    refused``.
    """
    return _BROKER_PREFIX.sub("", _VARYING[0][0].sub("", text)).strip()


def probe_brokers(client_config: Mapping[str, Any], timeout: float) -> None:
    """Return once the brokers answer a metadata request; raise after ``timeout`` seconds.

    Args:
        client_config: librdkafka settings with ``bootstrap.servers`` (SASL, SSL, ...).
        timeout: seconds to keep trying while the brokers cannot be reached.

    Raises:
        AuthenticationError: the brokers refused the credentials (raised at once).
        BrokerUnavailableError: no broker answered within ``timeout``; the text names the
            bootstrap servers, the cause (connection refused, DNS, TLS, timeout), the
            number of failed attempts, librdkafka's reason and what to check.
    """
    servers = str(client_config.get("bootstrap.servers", "?"))
    errors = _ProbeErrors()
    config: dict[str, Any] = {
        **client_config,
        "error_cb": errors.on_error,
        "logger": LibrdkafkaLogger(logger, quiet=True),
    }
    admin = AdminClient(config)
    started = time.monotonic()
    deadline = started + timeout
    while True:
        remaining = deadline - time.monotonic()
        try:
            admin.list_topics(timeout=max(min(remaining, 0.25), 0.05))
            return
        except KafkaException:
            admin.poll(0)  # serve error_cb
        if errors.authentication is not None:
            raise AuthenticationError(
                f"Kafka at {servers} refused the credentials "
                f"({errors.detail or errors.authentication.str()}); "
                f"{_HINTS[Cause.AUTHENTICATION]}"
            )
        if time.monotonic() >= deadline:
            break
    cause = errors.cause or Cause.TIMEOUT
    detail = (
        f"{errors.attempts} failed attempt(s), last: {errors.detail}"
        if errors.detail
        else "no answer"
    )
    raise BrokerUnavailableError(
        f"cannot reach Kafka at {servers} ({cause.value}) within {timeout:g}s "
        f"[{detail}]; {_HINTS[cause]}"
    )
