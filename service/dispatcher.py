"""MessageDispatcher: decode -> deduplicate -> dispatch -> settle, one message at a time.

The contract, per message delivered by the queue's subscription:

1. ``early_ack``: the message is acknowledged on receipt, before anything else.
2. The routing headers are read; a message without them is dead-lettered.
3. The consumers whose ``accepts(manifest)`` is true are chosen; if there are none, the
   message is acknowledged **without being decoded**.
4. The payload is decoded with the serializer named by its ``serializer_id``; an unknown
   serializer or manifest, or bytes that do not decode, dead-letter the message at once
   (retrying the same bytes cannot help). A schema registry that cannot answer is not the
   message's fault: the message is redelivered after a backoff, for as long as it lasts.
5. Each chosen consumer runs unless it already succeeded on this message: a key
   ``<consumer name>.<message id>`` found in the deduplication cache counts as a success, and
   so does an earlier success on the same record within this process (bounded memory). The
   key is stored after the consumer succeeds.
6. If every chosen consumer succeeded and its key was stored (or ``always_ack``), the message
   is acknowledged. Otherwise it is redelivered after the retry policy's backoff, and
   dead-lettered with the failing consumers once the policy's attempts are spent, unless
   every error may pass (see ``service.errors``): those are retried for as long as they last.

``on_exception`` receives every consumer, deduplication and decoding error (as the
``service.errors`` types); ``after_consume`` is called after every message. An exception
raised by either callback ends the loop, leaving the message in hand undone (it will be
delivered again).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from service.backends.base import (
    DeadLetterReason,
    MessagingBackend,
    Subscription,
    SubscriptionListener,
)
from service.concurrency import ConcurrentLoop, Ordering
from service.consumers import Consumer
from service.dedup.base import DeduplicationCache, NullCache
from service.errors import (
    BackendError,
    ConfigurationError,
    ConsumerError,
    MessageError,
    SchemaRegistryError,
)
from service.messages import Message, read_routing
from service.outcomes import (
    ACK,
    SKIP,
    DispatchObserver,
    DispatchOutcome,
    ExceptionCallback,
    Verdict,
    consumer_error,
    may_pass,
    report,
    store_error,
)
from service.retry import RetryPolicy
from service.serializers.registry import SerializerRegistry

__all__ = ["DispatchObserver", "DispatchOutcome", "MessageDispatcher", "SimpleMessageDispatcher"]

logger = logging.getLogger(__name__)

_Record = tuple[str, int, int]


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
        confirm_timeout: seconds to wait, when the loop ends, for the dedup store to make
            its entries durable.
        observer: told about polls and outcomes (metrics).
        concurrency: worker threads; above 1, see :mod:`service.concurrency` (ordered
            concurrency, back-pressure, local retries on the message's lane).
        ordering: ``partition`` (default), ``key`` or ``none``: what must stay in order.
        max_in_flight: messages polled and not settled, at most (default: max(10 x
            concurrency, poll_batch)).
        max_in_flight_per_partition: the same per partition; a full partition is paused.

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
        poll_batch: int = 1000,
        poll_timeout: float = 0.5,
        remembered_records: int = 10_000,
        confirm_timeout: float = 30.0,
        observer: DispatchObserver | None = None,
        concurrency: int = 1,
        ordering: Ordering = "partition",
        max_in_flight: int | None = None,
        max_in_flight_per_partition: int | None = None,
    ) -> None:
        if backend is None:
            raise ConfigurationError(
                "MessageDispatcher needs a backend: pass backend=KafkaBackend(...) or "
                "InMemoryBackend()"
            )
        self.serializer_registry = serializer_registry
        self._cache: DeduplicationCache = cache if cache is not None else NullCache()
        self._dedup = not isinstance(self._cache, NullCache)
        self.always_ack = always_ack
        self.early_ack = early_ack
        self.retry = retry or RetryPolicy()
        self._backend = backend
        self._attached: tuple[tuple[Consumer, str], ...] = ()
        self._routes: dict[str, tuple[tuple[Consumer, str], ...]] = {}
        self._poll_batch = poll_batch
        self._poll_timeout = poll_timeout
        self._remembered_limit = remembered_records
        self.confirm_timeout = confirm_timeout
        self.observer = observer
        if concurrency < 1 or ordering not in ("partition", "key", "none"):
            raise ConfigurationError(
                f"concurrency must be >= 1 and ordering partition, key or none; got "
                f"{concurrency}, {ordering!r}"
            )
        self.concurrency = concurrency
        self.ordering: Ordering = ordering
        self.max_in_flight = max_in_flight or max(10 * concurrency, poll_batch)
        self.max_in_flight_per_partition = max_in_flight_per_partition or self.max_in_flight
        self.listeners: list[SubscriptionListener] = []
        """Attached to every subscription this dispatcher opens (metrics, health)."""
        self.subscription: Subscription | None = None
        """The subscription of the running loop, if any."""
        self.last_poll = 0.0
        """``time.monotonic()`` of the last poll (health checks read it)."""
        self._remembered: OrderedDict[_Record, dict[str, bool]] = OrderedDict()
        self._memory_lock = threading.Lock()
        self._stop_requested = False  # a plain flag: setting it is atomic, reading it cheap

    @property
    def backend(self) -> MessagingBackend:
        """The backend this dispatcher consumes from."""
        return self._backend

    @property
    def cache(self) -> DeduplicationCache:
        """The deduplication store."""
        return self._cache

    @property
    def consumers(self) -> tuple[Consumer, ...]:
        """The attached consumers, in attachment order."""
        return tuple(c for c, _ in self._attached)

    def attach_consumer(self, consumer: Consumer) -> None:
        """Attach ``consumer`` so that it receives messages; attaching twice does nothing.

        The consumer's :attr:`~Consumer.name` is read once, here. Its ``accepts`` answer is
        cached per manifest until the next attach or detach, so ``accepts`` must depend on
        the manifest only.

        Raises:
            ConfigurationError: another attached consumer has the same :attr:`Consumer.name`
                (they would share deduplication keys).
        """
        if any(c is consumer for c, _ in self._attached):
            return
        name = consumer.name
        if any(n == name for _, n in self._attached):
            raise ConfigurationError(
                f"a consumer named {name!r} is already attached; give one of them "
                "another name (override Consumer.name) so their dedup keys differ"
            )
        self._attached = (*self._attached, (consumer, name))
        self._routes = {}

    def detach_consumer(self, consumer: Consumer) -> None:
        """Detach ``consumer``; it receives no further messages."""
        self._attached = tuple(pair for pair in self._attached if pair[0] is not consumer)
        self._routes = {}

    unattach_consumer = detach_consumer

    def stop(self) -> None:
        """Make the running loop, or the next one to start, return after the message in hand.

        Thread-safe and signal-safe.
        """
        self._stop_requested = True

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
                self.subscription = subscription
                self._cache.attach(subscription)
                for listener in self.listeners:
                    subscription.add_listener(listener)
                try:
                    if self.concurrency > 1:
                        ConcurrentLoop(
                            self,
                            subscription,
                            concurrency=self.concurrency,
                            ordering=self.ordering,
                            max_in_flight=self.max_in_flight,
                            max_in_flight_per_partition=self.max_in_flight_per_partition,
                            on_exception=on_exception,
                            after_consume=after_consume,
                        ).run()
                    else:
                        self._sequential(subscription, on_exception, after_consume)
                finally:
                    self._cache.flush(self.confirm_timeout)  # entries durable before commit
        finally:
            self._stop_requested = False
            self.subscription = None

    def _sequential(
        self,
        subscription: Subscription,
        on_exception: ExceptionCallback | None,
        after_consume: Callable[[], None] | None,
    ) -> None:
        dispatch, cache, observer = self.dispatch, self._cache, self.observer
        while not self._stop_requested:
            batch = subscription.poll(self._poll_batch, self._poll_timeout)
            self.last_poll = time.monotonic()
            if batch is None:
                return
            count = 0
            for message in batch:
                if self._stop_requested:
                    return
                if observer is None:
                    dispatch(subscription, message, on_exception)
                else:
                    started = time.perf_counter()
                    outcome = dispatch(subscription, message, on_exception)
                    observer.message_outcome(message, outcome, time.perf_counter() - started)
                count += 1
                if after_consume is not None:
                    after_consume()
            cache.poll()
            if observer is not None:
                observer.polled(count)

    @property
    def stop_requested(self) -> bool:
        """Whether :meth:`stop` was called and the loop has not returned yet."""
        return self._stop_requested

    @property
    def poll_batch(self) -> int:
        """The most messages taken in one poll."""
        return self._poll_batch

    @property
    def poll_timeout(self) -> float:
        """Seconds one poll waits."""
        return self._poll_timeout

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
        return self.settle(subscription, message, self.decide(message, on_exception), on_exception)

    def decide(self, message: Message, on_exception: ExceptionCallback | None = None) -> Verdict:
        """Run the consumers on ``message`` and say how to settle it; settles nothing.

        Thread-safe for different messages: concurrent loops call it from worker threads and
        settle the verdicts on the loop's thread.
        """
        errors: list[Exception] = []
        try:
            serializer_id, manifest, message_id = read_routing(message)
            route = self._routes.get(manifest)
            if route is None:
                route = self._route(manifest, message, errors)
            if not route and not errors:
                return SKIP
            if message.value is None:
                raise MessageError("the record has no value (a tombstone)", message)
            data = self.serializer_registry.get_serializer_by_id(serializer_id).deserialize(
                message.value, manifest
            )
        except MessageError as exc:
            exc.locate(message)
            report(on_exception, exc)
            return Verdict(DispatchOutcome.DEAD_LETTERED, DeadLetterReason.from_error(exc))
        except SchemaRegistryError as exc:  # may pass: wait and retry, never dead-letter
            report(on_exception, exc)
            return Verdict(DispatchOutcome.RETRIED, delay=self.retry.delay(message.attempt))
        for refusal in errors:
            report(on_exception, refusal)
        progress = self._recall(message) if self._remembered else None
        if progress is None:
            progress = {}
        if self._dedup or progress:
            for consumer, name in route:
                result = self._run(consumer, name, data, message_id, message, progress)
                if isinstance(result, Exception):
                    errors.append(result)
                    report(on_exception, result)
                if self.observer is not None:
                    self.observer.consumer_outcome(
                        name, "failure" if isinstance(result, Exception) else result
                    )
        else:  # the common case, inlined: no dedup store and a first delivery
            for consumer, name in route:
                try:
                    consumer.process(data, message_id=message_id)
                except Exception as exc:  # noqa: BLE001 - policy: see _run
                    error = consumer_error(name, message, exc)
                    errors.append(error)
                    report(on_exception, error)
                    if self.observer is not None:
                        self.observer.consumer_outcome(name, "failure")
                else:
                    progress[name] = True
                    if self.observer is not None:
                        self.observer.consumer_outcome(name, "success")
        if not errors or self.always_ack or self.early_ack:
            return ACK  # committed only once its dedup entries are durable
        failing = [name for _, name in route if not progress.get(name)]
        failing += [e.consumer_name for e in errors if isinstance(e, ConsumerError)]
        self._remember(message, progress)
        if self.retry.is_exhausted(message.attempt) and not all(map(may_pass, errors)):
            reason = DeadLetterReason.from_error(
                errors[-1], message.attempt, tuple(dict.fromkeys(failing))
            )
            return Verdict(DispatchOutcome.DEAD_LETTERED, reason)
        return Verdict(DispatchOutcome.RETRIED, delay=self.retry.delay(message.attempt))

    def settle(
        self,
        subscription: Subscription,
        message: Message,
        verdict: Verdict,
        on_exception: ExceptionCallback | None = None,
    ) -> DispatchOutcome:
        """Carry out ``verdict`` on ``subscription`` (from the thread that polls it).

        With ``early_ack`` the message was acknowledged on receipt: only a dead letter is
        still written.
        """
        outcome = verdict.outcome
        if outcome is DispatchOutcome.DEAD_LETTERED:
            assert verdict.reason is not None  # noqa: S101 - a dead-letter verdict has one
            return self._dead_letter(subscription, message, verdict.reason, on_exception)
        if self.early_ack:
            return outcome
        if outcome is DispatchOutcome.RETRIED:
            subscription.redeliver(message, verdict.delay)
        else:
            subscription.acknowledge(message)
        return outcome

    def _route(
        self, manifest: str, message: Message, errors: list[Exception]
    ) -> tuple[tuple[Consumer, str], ...]:
        """The consumers that accept ``manifest``; cached unless an ``accepts`` raised.

        Policy: a consumer whose ``accepts`` raises counts as failed (its error is appended
        to ``errors``), so the message is retried, and in the end dead-lettered naming it,
        rather than skipped.
        """
        chosen: list[tuple[Consumer, str]] = []
        failed = False
        for consumer, name in self._attached:
            try:
                if consumer.accepts(manifest):
                    chosen.append((consumer, name))
            except Exception as exc:  # noqa: BLE001 - policy in the docstring
                error = ConsumerError(name, message, exc)
                error.__cause__ = exc
                errors.append(error)
                failed = True
        route = tuple(chosen)
        if not failed:
            self._routes[manifest] = route
        return route

    def _run(
        self,
        consumer: Consumer,
        name: str,
        data: Any,
        message_id: str,
        message: Message,
        progress: dict[str, bool],
    ) -> Exception | str:
        """Run one consumer unless it already succeeded; ``progress[name]`` = key stored.

        Returns the error, or the outcome: ``success``, or ``duplicate`` when the consumer
        did not run (its key was in the cache, or it succeeded on an earlier delivery).

        Policy: any ``Exception`` from the consumer or the cache is caught here, because one
        failing consumer must neither stop the loop nor lose the message; it is returned
        (wrapped in a ``service.errors`` type) and the message is retried.
        """
        stored = progress.get(name)
        key = f"{name}.{message_id}" if self._dedup else ""
        outcome = "success" if stored is None else "duplicate"
        if stored is None:
            if self._dedup:
                try:
                    seen = self._cache.get(key, partition=message.partition) is not None
                except Exception as exc:  # noqa: BLE001 - policy in the docstring
                    return store_error("read", key, message, exc)
                if seen:
                    progress[name] = True
                    return "duplicate"
            try:
                consumer.process(data, message_id=message_id)
            except Exception as exc:  # noqa: BLE001 - policy in the docstring
                return consumer_error(name, message, exc)
            stored = progress[name] = not self._dedup
        if not stored:
            try:
                self._cache.store(key, key, partition=message.partition)
            except Exception as exc:  # noqa: BLE001 - policy in the docstring
                return store_error("write", key, message, exc)
            progress[name] = True
        return outcome

    def _dead_letter(
        self,
        subscription: Subscription,
        message: Message,
        reason: DeadLetterReason,
        on_exception: ExceptionCallback | None = None,
    ) -> DispatchOutcome:
        logger.error("dead-lettering %s: %s", message.location, reason.text)
        try:
            subscription.dead_letter(message, reason)
        except BackendError as exc:
            report(on_exception, exc)
            subscription.redeliver(message, self.retry.delay(message.attempt))
            return DispatchOutcome.RETRIED
        if self._remembered:
            self._recall(message)  # done: forget its progress
        return DispatchOutcome.DEAD_LETTERED

    def _remember(self, message: Message, progress: dict[str, bool]) -> None:
        with self._memory_lock:
            self._remembered[(message.topic, message.partition, message.offset)] = progress
            while len(self._remembered) > self._remembered_limit:
                self._remembered.popitem(last=False)

    def _recall(self, message: Message) -> dict[str, bool] | None:
        with self._memory_lock:
            return self._remembered.pop((message.topic, message.partition, message.offset), None)


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
