"""MessageDispatcher: the facade users attach consumers to and start the loop from.

What happens to each message is decided by :class:`~service.dispatch.decider.Decider`
(decode -> deduplicate -> consumers -> verdict) and carried out by the one loop,
:class:`~service.dispatch.loop.ConsumeLoop` (poll -> submit -> settle); what is committed
is decided by the subscription's :class:`~service.backends.checkpoint.Checkpoint`. In short:

* a message is acknowledged once every consumer that accepts it succeeded (or was found in
  the deduplication cache), or always with ``always_ack``; when it starts with ``early_ack``;
* a message that cannot be decoded is dead-lettered at once; a failing one is redelivered
  after the retry policy's backoff and dead-lettered naming the failing consumers once its
  attempts are spent (errors that may pass are retried for as long as they last);
* offsets are committed per partition only below messages that are all done, and only once
  their dedup entries are durable.

``on_exception`` receives every consumer, deduplication and decoding error (as the
``service.errors`` types); ``after_consume`` is called after every settled message. An
exception raised by either callback ends the loop, leaving the message in hand undone (it
will be delivered again).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

from service.backends.base import (
    CommitGate,
    MessagingBackend,
    Subscription,
    SubscriptionListener,
)
from service.consumers import Consumer
from service.dedup.base import DeduplicationCache, NullCache
from service.dispatch.decider import Decider
from service.dispatch.executors import Executor, InlineExecutor, LanesExecutor, Ordering
from service.dispatch.flood import DeadLetterLimit
from service.dispatch.loop import ConsumeLoop
from service.dispatch.outcomes import DispatchObserver, DispatchOutcome, ExceptionCallback
from service.dispatch.retry import RetryPolicy
from service.dispatch.routing import RoutingRules
from service.errors import ConfigurationError
from service.serializers.registry import SerializerRegistry

__all__ = ["DispatchObserver", "DispatchOutcome", "MessageDispatcher", "SimpleMessageDispatcher"]

MAX_IN_FLIGHT_BYTES = 32 << 20
"""Default bound on the keys and values of messages taken and not settled (with
concurrency): with 150 KB records and 32 workers, 3,200 of them held 556 MiB."""


class MessageDispatcher:
    """Runs the consumption loop of a queue and hands each message to the consumers.

    Args:
        serializer_registry: decodes payloads by the message's serializer id.
        cache: the deduplication store; :class:`NullCache` when ``None``.
        backend: the messaging backend to consume from (required).
        always_ack: acknowledge even when a consumer failed (the failure is only reported).
        early_ack: acknowledge when a message starts, before processing: at-most-once.
        retry: backoff and attempts for failed messages; ``RetryPolicy()`` when ``None``.
        poll_batch: the most messages taken from the backend in one poll.
        poll_timeout: seconds one poll waits; bounds how long :meth:`stop` takes when idle.
        remembered_records: how many partly processed records the dispatcher remembers so
            that a redelivery runs only the consumers that have not succeeded yet.
        observer: told about polls and outcomes (metrics).
        concurrency: worker threads; above 1, messages run on ordered lanes
            (:class:`~service.dispatch.executors.LanesExecutor`).
        ordering: ``partition`` (default), ``key`` or ``none``: what must stay in order.
        max_in_flight: messages polled and not settled, at most (default: max(100 x
            concurrency, poll_batch)); a full executor pauses the partition. Records come
            in runs of one partition (a poll batch is often one or two partitions), so the
            executor must hold several partitions' runs to find ``concurrency`` lanes that
            can run: with 10 x 32, 32 workers on 64 keys over 6 partitions ran ~10x a
            sequential loop, with 100 x 32 ~25x (``bench.concurrency_case``).
        max_in_flight_per_partition: the same per partition.
        max_in_flight_bytes: the keys and values of those messages, at most (default 32 MiB;
            passed by at most one record, which is taken while they are below it): bounds
            memory when records are large, whatever ``max_in_flight``.
        revoke_timeout: seconds a revocation waits for started work of its partitions.
        routing: how records of other producers are routed and message ids chosen
            (:class:`~service.dispatch.routing.RoutingRules`; records with the routing
            headers need none).
        key_decoder: decodes record keys for handlers' ``record.key`` (bytes when None).
        dead_letter_limit: halt the queue when it dead-letters too much
            (:class:`~service.dispatch.flood.DeadLetterLimit`); off when None.

    Raises:
        ConfigurationError: no backend was given, or the concurrency settings are invalid.
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
        observer: DispatchObserver | None = None,
        concurrency: int = 1,
        ordering: Ordering = "partition",
        max_in_flight: int | None = None,
        max_in_flight_per_partition: int | None = None,
        max_in_flight_bytes: int | None = None,
        revoke_timeout: float = 60.0,
        routing: RoutingRules | None = None,
        key_decoder: Callable[[bytes], Any] | None = None,
        dead_letter_limit: DeadLetterLimit | None = None,
    ) -> None:
        if backend is None:
            raise ConfigurationError(
                "MessageDispatcher needs a backend: pass backend=KafkaBackend(...) or "
                "InMemoryBackend()"
            )
        if concurrency < 1 or ordering not in ("partition", "key", "none"):
            raise ConfigurationError(
                f"concurrency must be >= 1 and ordering partition, key or none; got "
                f"{concurrency}, {ordering!r}"
            )
        self._backend = backend
        self._decider = Decider(
            serializer_registry,
            cache if cache is not None else NullCache(),
            retry or RetryPolicy(),
            always_ack=always_ack,
            remembered_records=remembered_records,
            routing=routing,
            key_decoder=key_decoder,
        )
        self.early_ack = early_ack
        self.poll_batch = poll_batch
        self.poll_timeout = poll_timeout
        self.concurrency = concurrency
        self.ordering: Ordering = ordering
        self.max_in_flight = max_in_flight or max(100 * concurrency, poll_batch)
        self.max_in_flight_per_partition = max_in_flight_per_partition or self.max_in_flight
        self.max_in_flight_bytes = max_in_flight_bytes or MAX_IN_FLIGHT_BYTES
        self.revoke_timeout = revoke_timeout
        self.observer = observer
        self.listeners: list[SubscriptionListener] = []
        """Attached to every subscription this dispatcher opens (metrics, health)."""
        self.gates: list[CommitGate] = []
        """Commit gates added to every subscription this dispatcher opens."""
        self.subscription: Subscription | None = None
        """The subscription of the running loop, if any."""
        self.last_poll = 0.0
        """``time.monotonic()`` of the last poll (health checks read it)."""
        self._stop_requested = False  # a plain flag: setting it is atomic, reading it cheap
        self.dead_letter_limit = dead_letter_limit

    @property
    def backend(self) -> MessagingBackend:
        """The backend this dispatcher consumes from."""
        return self._backend

    @property
    def cache(self) -> DeduplicationCache:
        """The deduplication store."""
        return self._decider.cache

    @property
    def serializer_registry(self) -> SerializerRegistry:
        """The serializers payloads are decoded with."""
        return self._decider.serializer_registry

    @property
    def retry(self) -> RetryPolicy:
        """The retry policy."""
        return self._decider.retry

    @property
    def always_ack(self) -> bool:
        """Whether messages are acknowledged even when a consumer failed."""
        return self._decider.always_ack

    @property
    def consumers(self) -> tuple[Consumer, ...]:
        """The attached consumers, in attachment order."""
        return self._decider.consumers

    def attach_consumer(self, consumer: Consumer) -> None:
        """Attach ``consumer`` so that it receives messages; attaching twice does nothing.

        The consumer's :attr:`~Consumer.name` is read once, here. Its ``accepts`` answer is
        cached per manifest until the next attach or detach, so ``accepts`` must depend on
        the manifest only.

        Raises:
            ConfigurationError: another attached consumer has the same :attr:`Consumer.name`
                (they would share deduplication keys).
        """
        self._decider.attach(consumer)

    def detach_consumer(self, consumer: Consumer) -> None:
        """Detach ``consumer``; it receives no further messages."""
        self._decider.detach(consumer)

    unattach_consumer = detach_consumer

    def stop(self) -> None:
        """Make the running loop, or the next one to start, return after the messages in hand.

        Thread-safe and signal-safe.
        """
        self._stop_requested = True

    @property
    def halted(self) -> str | None:
        """Why the running loop stopped taking messages (dead-letter limit), or None."""
        limit = self.dead_letter_limit
        return None if limit is None else limit.tripped

    @property
    def stop_requested(self) -> bool:
        """Whether :meth:`stop` was called and the loop has not returned yet."""
        return self._stop_requested

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
        decider = self._decider
        decider.observer = self.observer
        decider.queue = queue_name
        try:
            with self._backend.subscribe(queue_name) as subscription:
                self.subscription = subscription
                if subscription.transactional and self.early_ack:
                    raise ConfigurationError(
                        f"queue {queue_name!r}: exactly-once processing commits outputs with "
                        "offsets after the handlers ran; early_ack cannot be combined with it"
                    )
                if subscription.transactional and not decider.cache.transactional:
                    raise ConfigurationError(
                        f"queue {queue_name!r}: {type(decider.cache).__name__} cannot serve an "
                        "exactly-once queue: its entries would outlive an aborted transaction "
                        "and the messages it rewinds would count as duplicates; use the "
                        "compacted-topic store (dedup kind compacted) or none"
                    )
                decider.staging = subscription.transactional
                executor = self._executor(on_exception)
                loop = ConsumeLoop(
                    subscription,
                    decider,
                    executor,
                    should_stop=lambda: self._stop_requested,
                    early_ack=self.early_ack,
                    poll_batch=self.poll_batch,
                    poll_timeout=self.poll_timeout,
                    revoke_timeout=self.revoke_timeout,
                    observer=self.observer,
                    on_exception=on_exception,
                    after_consume=after_consume,
                    on_poll=self._polled,
                    dead_letter_limit=self.dead_letter_limit,
                )
                subscription.add_listener(loop)  # first: settles work before the commit
                decider.cache.attach(subscription)
                for listener in self.listeners:
                    subscription.add_listener(listener)
                for gate in self.gates:
                    subscription.add_gate(gate)
                loop.run()
        finally:
            decider.close()
            self._stop_requested = False
            self.subscription = None

    consume_event = consume_loop

    def _executor(self, on_exception: ExceptionCallback | None) -> Executor:
        run = functools.partial(self._decider.decide, on_exception=on_exception)

        if self.concurrency == 1:
            return InlineExecutor(run)
        return LanesExecutor(
            run,
            concurrency=self.concurrency,
            ordering=self.ordering,
            max_in_flight=self.max_in_flight,
            max_in_flight_per_partition=self.max_in_flight_per_partition,
            should_stop=lambda: self._stop_requested,
            report_starts=self.early_ack,  # early_ack acknowledges a message when it starts
            max_in_flight_bytes=self.max_in_flight_bytes,
        )

    def _polled(self) -> None:
        self.last_poll = time.monotonic()


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
