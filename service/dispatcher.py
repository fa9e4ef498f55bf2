"""MessageDispatcher: decode -> deduplicate -> dispatch -> settle, one message at a time.

The contract, per message delivered by the queue's subscription:

1. ``early_ack``: the message is acknowledged on receipt, before anything else.
2. The routing headers are read; a message without them is dead-lettered.
3. The consumers whose ``accepts(manifest)`` is true are chosen; if there are none, the
   message is acknowledged **without being decoded**.
4. The payload is decoded with the serializer named by its ``serializer_id``; an unknown
   serializer or manifest, or bytes that do not decode, dead-letter the message at once
   (retrying the same bytes cannot help).
5. Each chosen consumer runs unless it already succeeded on this message: a key
   ``<consumer name>.<message id>`` found in the deduplication cache counts as a success, and
   so does an earlier success on the same record within this process (bounded memory). The
   key is stored after the consumer succeeds.
6. If every chosen consumer succeeded and its key was stored (or ``always_ack``), the message
   is acknowledged. Otherwise it is redelivered after the retry policy's backoff, and
   dead-lettered with the failing consumers once the policy's attempts are spent.

``on_exception`` receives every consumer, deduplication and decoding error (as the
``service.errors`` types); ``after_consume`` is called after every message. An exception
raised by either callback ends the loop, leaving the message in hand undone (it will be
delivered again).
"""

from __future__ import annotations

import enum
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from service.backends.base import DeadLetterReason, MessagingBackend, Subscription
from service.consumers import Consumer
from service.dedup.base import DeduplicationCache, NullCache
from service.errors import (
    BackendError,
    ConfigurationError,
    ConsumerError,
    DeduplicationStoreError,
    MessageError,
)
from service.messages import Message, read_routing
from service.retry import RetryPolicy
from service.serializers.registry import SerializerRegistry

__all__ = ["DispatchOutcome", "MessageDispatcher", "SimpleMessageDispatcher"]

logger = logging.getLogger(__name__)

ExceptionCallback = Callable[[Exception], None]
_Record = tuple[str, int, int]


class DispatchOutcome(enum.Enum):
    """How the dispatcher settled one message."""

    ACKNOWLEDGED = "acknowledged"
    SKIPPED = "skipped"  # no consumer accepts the manifest; acknowledged undecoded
    RETRIED = "retried"
    DEAD_LETTERED = "dead_lettered"


class MessageDispatcher:
    """Runs the consumption loop of a queue and hands each message to the consumers.

    Args:
        serializer_registry: decodes payloads by the message's serializer id.
        cache: the deduplication store; :class:`NullCache` when ``None``.
        backend: the messaging backend to consume from (required).
        always_ack: acknowledge even when a consumer failed (the failure is only reported).
        early_ack: acknowledge on receipt, before processing: at-most-once delivery.
        retry: backoff and attempts for failed messages; ``RetryPolicy()`` when ``None``.
        poll_batch: the most messages taken from the backend in one poll.
        poll_timeout: seconds one poll waits; bounds how long :meth:`stop` takes when idle.
        remembered_records: how many partly processed records the dispatcher remembers so
            that a redelivery runs only the consumers that have not succeeded yet.

    Raises:
        ConfigurationError: no backend was given.
    """

    def __init__(
        self,
        serializer_registry: SerializerRegistry,
        cache: DeduplicationCache | None = None,
        backend: MessagingBackend | None = None,
        always_ack: bool = False,
        early_ack: bool = False,
        *,
        retry: RetryPolicy | None = None,
        poll_batch: int = 500,
        poll_timeout: float = 0.5,
        remembered_records: int = 10_000,
    ) -> None:
        if backend is None:
            raise ConfigurationError(
                "MessageDispatcher needs a backend: pass backend=KafkaBackend(...) or "
                "InMemoryBackend()"
            )
        self.serializer_registry = serializer_registry
        self.cache: DeduplicationCache = cache if cache is not None else NullCache()
        self.always_ack = always_ack
        self.early_ack = early_ack
        self.retry = retry or RetryPolicy()
        self._backend = backend
        self._consumers: tuple[Consumer, ...] = ()
        self._poll_batch = poll_batch
        self._poll_timeout = poll_timeout
        self._remembered_limit = remembered_records
        self._remembered: OrderedDict[_Record, dict[str, bool]] = OrderedDict()
        self._stopping = threading.Event()

    @property
    def backend(self) -> MessagingBackend:
        """The backend this dispatcher consumes from."""
        return self._backend

    @property
    def consumers(self) -> tuple[Consumer, ...]:
        """The attached consumers, in attachment order."""
        return self._consumers

    def attach_consumer(self, consumer: Consumer) -> None:
        """Attach ``consumer`` so that it receives messages; attaching twice does nothing.

        Raises:
            ConfigurationError: another attached consumer has the same :attr:`Consumer.name`
                (they would share deduplication keys).
        """
        if consumer in self._consumers:
            return
        if any(c.name == consumer.name for c in self._consumers):
            raise ConfigurationError(
                f"a consumer named {consumer.name!r} is already attached; give one of them "
                "another name (override Consumer.name) so their dedup keys differ"
            )
        self._consumers = (*self._consumers, consumer)

    def detach_consumer(self, consumer: Consumer) -> None:
        """Detach ``consumer``; it receives no further messages."""
        self._consumers = tuple(c for c in self._consumers if c is not consumer)

    unattach_consumer = detach_consumer

    def stop(self) -> None:
        """Make the running loop, or the next one to start, return after the message in hand.

        Thread-safe and signal-safe.
        """
        self._stopping.set()

    def consume_loop(
        self,
        queue_name: str,
        on_exception: ExceptionCallback | None = None,
        after_consume: Callable[[], None] | None = None,
    ) -> None:
        """Consume ``queue_name`` until :meth:`stop` (or, on a finite backend, until drained).

        Messages polled but not reached when stopping are left undone and will be delivered
        again; the subscription is closed (committing what is done) on the way out.
        """
        try:
            with self._backend.subscribe(queue_name) as subscription:
                while not self._stopping.is_set():
                    batch = subscription.poll(self._poll_batch, self._poll_timeout)
                    if batch is None:
                        return
                    for message in batch:
                        if self._stopping.is_set():
                            return
                        self.dispatch(subscription, message, on_exception)
                        if after_consume is not None:
                            after_consume()
        finally:
            self._stopping.clear()

    consume_event = consume_loop

    def dispatch(
        self,
        subscription: Subscription,
        message: Message,
        on_exception: ExceptionCallback | None = None,
    ) -> DispatchOutcome:
        """Process one message and settle it on ``subscription`` (steps 1-6 above)."""
        if self.early_ack:
            subscription.acknowledge(message)
        try:
            routing = read_routing(message)
            accepting, errors = self._accepting(routing.manifest, message)
            if not accepting and not errors:
                if not self.early_ack:
                    subscription.acknowledge(message)
                return DispatchOutcome.SKIPPED
            if message.value is None:
                raise MessageError("the record has no value (a tombstone)", message)
            data = self.serializer_registry.deserialize_with_serializerid(
                message.value, routing.serializer_id, manifest=routing.manifest
            )
        except MessageError as exc:
            exc.locate(message)
            _report(on_exception, exc)
            return self._dead_letter(subscription, message, DeadLetterReason.from_error(exc))
        for refusal in errors:
            _report(on_exception, refusal)
        record = (message.topic, message.partition, message.offset)
        progress = self._remembered.pop(record, None) or {}
        for consumer in accepting:
            error = self._run(consumer, data, routing.message_id, message, progress)
            if error is not None:
                errors.append(error)
                _report(on_exception, error)
        if self.early_ack:
            return DispatchOutcome.ACKNOWLEDGED
        if not errors or self.always_ack:
            subscription.acknowledge(message)
            return DispatchOutcome.ACKNOWLEDGED
        failing = [c.name for c in accepting if not progress.get(c.name)]
        failing += [e.consumer_name for e in errors if isinstance(e, ConsumerError)]
        if self.retry.is_exhausted(message.attempt):
            reason = DeadLetterReason.from_error(
                errors[-1], message.attempt, tuple(dict.fromkeys(failing))
            )
            return self._dead_letter(subscription, message, reason, on_exception, progress)
        self._remember(record, progress)
        subscription.redeliver(message, self.retry.delay(message.attempt))
        return DispatchOutcome.RETRIED

    def _accepting(self, manifest: str, message: Message) -> tuple[list[Consumer], list[Exception]]:
        """The consumers that accept ``manifest``, and the errors of ``accepts`` that raised.

        Policy: a consumer whose ``accepts`` raises counts as failed, so the message is
        retried (and in the end dead-lettered naming it) rather than skipped.
        """
        chosen: list[Consumer] = []
        errors: list[Exception] = []
        for consumer in self._consumers:
            try:
                if consumer.accepts(manifest):
                    chosen.append(consumer)
            except Exception as exc:  # noqa: BLE001 - policy in the docstring
                error = ConsumerError(consumer.name, message, exc)
                error.__cause__ = exc
                errors.append(error)
        return chosen, errors

    def _run(
        self,
        consumer: Consumer,
        data: Any,
        message_id: str,
        message: Message,
        progress: dict[str, bool],
    ) -> Exception | None:
        """Run one consumer unless it already succeeded; ``progress[name]`` = key stored.

        Policy: any ``Exception`` from the consumer or the cache is caught here, because one
        failing consumer must neither stop the loop nor lose the message; it is returned
        (wrapped in a ``service.errors`` type) and the message is retried.
        """
        name = consumer.name
        key = f"{name}.{message_id}"
        stored = progress.get(name)
        if stored is None:
            try:
                seen = key in self.cache
            except Exception as exc:  # noqa: BLE001 - policy in the docstring
                return _store_error("read", key, message, exc)
            if seen:
                progress[name] = True
                return None
            try:
                consumer.process(data, message_id=message_id)
            except Exception as exc:
                error = ConsumerError(name, message, exc)
                error.__cause__ = exc
                logger.warning("%s", error, exc_info=exc)
                return error
            progress[name] = False
        if not progress[name]:
            try:
                self.cache.store(key, key)
            except Exception as exc:  # noqa: BLE001 - policy in the docstring
                return _store_error("write", key, message, exc)
            progress[name] = True
        return None

    def _dead_letter(
        self,
        subscription: Subscription,
        message: Message,
        reason: DeadLetterReason,
        on_exception: ExceptionCallback | None = None,
        progress: dict[str, bool] | None = None,
    ) -> DispatchOutcome:
        logger.error("dead-lettering %s: %s", message.location, reason.text)
        try:
            subscription.dead_letter(message, reason)
        except BackendError as exc:
            _report(on_exception, exc)
            if progress is not None:
                self._remember((message.topic, message.partition, message.offset), progress)
            subscription.redeliver(message, self.retry.delay(message.attempt))
            return DispatchOutcome.RETRIED
        return DispatchOutcome.DEAD_LETTERED

    def _remember(self, record: _Record, progress: dict[str, bool]) -> None:
        self._remembered[record] = progress
        while len(self._remembered) > self._remembered_limit:
            self._remembered.popitem(last=False)


class SimpleMessageDispatcher(MessageDispatcher):
    """A :class:`MessageDispatcher` with exactly one consumer, attached at construction."""

    def __init__(
        self,
        consumer: Consumer,
        serializer_registry: SerializerRegistry,
        cache: DeduplicationCache | None = None,
        backend: MessagingBackend | None = None,
        always_ack: bool = False,
        **options: Any,
    ) -> None:
        super().__init__(serializer_registry, cache, backend, always_ack, **options)
        self.attach_consumer(consumer)


def _report(callback: ExceptionCallback | None, error: Exception) -> None:
    if callback is not None:
        callback(error)


def _store_error(
    operation: str, key: str, message: Message, exc: Exception
) -> DeduplicationStoreError:
    if isinstance(exc, DeduplicationStoreError):
        return exc
    error = DeduplicationStoreError(
        f"cannot {operation} dedup key {key!r} for {message.location}: {type(exc).__name__}: {exc}"
    )
    error.__cause__ = exc
    return error
