"""Decider: what to do with one message - decode, deduplicate, run the consumers, judge.

It settles nothing: it returns a :class:`~service.dispatch.outcomes.Verdict` that the loop
carries out on the subscription. That split lets executors run consumers on worker threads
while one thread settles; :meth:`Decider.decide` is thread-safe for different messages.

The judgement, per message:

1. The record is routed (:mod:`service.dispatch.routing`): serializer, manifest and message
   id from the routing headers, or by the queue's rules for records of other producers; a
   record that cannot be routed is dead-lettered.
2. The consumers whose ``accepts(manifest)`` is true are chosen; if there are none, the
   message is skipped (acknowledged **without being decoded**).
3. The payload is decoded with the serializer named by its ``serializer_id``; an unknown
   serializer or manifest, or bytes that do not decode, dead-letter it at once (retrying the
   same bytes cannot help). A schema registry that cannot answer is not the message's fault:
   it is redelivered after a backoff, for as long as that lasts.
4. Each chosen consumer runs unless it already succeeded on this message: a key
   ``<consumer name>.<message id>`` found in the deduplication cache counts as a success, and
   so does an earlier success on the same record within this process (bounded memory). The
   key is stored after the consumer succeeds.
   A consumer receives the decoded message, ``message_id=`` and ``record=`` (a
   :class:`~service.messages.Record`). If it returns an awaitable (an ``async def``
   consumer), the awaitable is run to completion on the dispatcher's event loop before the
   consumer counts as succeeded: a coroutine is never left un-awaited.
5. If every chosen consumer succeeded and its key was stored (or ``always_ack``), the message
   is acknowledged. Otherwise it is redelivered after the retry policy's backoff, and
   dead-lettered naming the failing consumers once the policy's attempts are spent, unless
   every error may pass (see ``service.errors``): those are retried for as long as they last.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from inspect import isasyncgen, isawaitable, isgenerator
from typing import Any

from service.backends.base import DeadLetterReason
from service.backends.outputs import (
    Outputs,
    current_outputs,
    outputs_slot,
    reset_outputs,
    set_outputs,
)
from service.consumers import Consumer
from service.dedup.base import DeduplicationCache, NullCache
from service.dispatch.aio import EventLoopThread
from service.dispatch.outcomes import (
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
from service.dispatch.retry import RetryPolicy
from service.dispatch.routing import RoutingRules
from service.errors import (
    ConfigurationError,
    ConsumerError,
    MessageError,
    ProduceError,
    SchemaRegistryError,
)
from service.messages import Message, Record
from service.serializers.registry import SerializerRegistry

__all__ = ["Decider"]

_new_tuple = tuple.__new__  # a NamedTuple built without its Python-level __new__
_DECODERS_KEPT = 1024  # (serializer id, manifest) pairs whose decoder is remembered

_Record = tuple[str, int, int]
_Route = tuple[tuple[Consumer, str], ...]


class Decider:
    """Decides the fate of each message for a set of attached consumers.

    Args:
        serializer_registry: decodes payloads by the message's serializer id.
        cache: the deduplication store.
        retry: backoff and attempts for failed messages.
        always_ack: acknowledge even when a consumer failed (the failure is only reported).
        remembered_records: how many partly processed records are remembered, so that a
            redelivery runs only the consumers that have not succeeded yet.
        routing: how records are routed and their message ids chosen.
        key_decoder: decodes record keys for :class:`~service.messages.Record` (bytes as
            they are when None).
    """

    def __init__(
        self,
        serializer_registry: SerializerRegistry,
        cache: DeduplicationCache,
        retry: RetryPolicy,
        *,
        always_ack: bool,
        remembered_records: int,
        routing: RoutingRules | None = None,
        key_decoder: Callable[[bytes], Any] | None = None,
    ) -> None:
        self.serializer_registry = serializer_registry
        self.cache = cache
        self.retry = retry
        self.always_ack = always_ack
        self.observer: DispatchObserver | None = None
        self._dedup = not isinstance(cache, NullCache)
        self._attached: _Route = ()
        self._routes: dict[str, _Route] = {}
        self._remembered: OrderedDict[_Record, dict[str, bool]] = OrderedDict()
        self._remembered_limit = remembered_records
        self._memory_lock = threading.Lock()
        self.routing = routing or RoutingRules()
        self._key_decoder = key_decoder
        self.queue = ""
        """The queue being consumed (set by the dispatcher; a log field)."""
        self._decoders: dict[tuple[int, str], Callable[[bytes], Any]] = {}
        self.staging = False
        """Stage handlers' outputs for a transaction (set for exactly-once subscriptions)."""
        self.event_loop = EventLoopThread()
        """Where awaitables returned by consumers run (started on first use)."""

    @property
    def consumers(self) -> tuple[Consumer, ...]:
        """The attached consumers, in attachment order."""
        return tuple(c for c, _ in self._attached)

    def attach(self, consumer: Consumer) -> None:
        """Attach ``consumer``; attaching twice does nothing.

        Raises:
            ConfigurationError: another attached consumer has the same name.
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

    def detach(self, consumer: Consumer) -> None:
        """Detach ``consumer``."""
        self._attached = tuple(pair for pair in self._attached if pair[0] is not consumer)
        self._routes = {}

    def decide(self, message: Message, on_exception: ExceptionCallback | None = None) -> Verdict:
        """Run the consumers on ``message`` and say how to settle it; settles nothing."""
        errors: list[Exception] = []
        try:
            serializer_id, manifest, message_id = self.routing.route(message)
            route = self._routes.get(manifest)
            if route is None:
                route = self._route(manifest, message, errors)
            if not route and not errors:
                return SKIP
            if message.value is None:
                raise MessageError("the record has no value (a tombstone)", message)
            decode = self._decoders.get((serializer_id, manifest))
            if decode is None:
                decode = self._decoder(serializer_id, manifest)
            data = decode(message.value)
            if message_id is None:
                message_id = self.routing.payload_id(data, message)
            record = self._record(message, message_id)
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
        slot = outputs_slot()  # what handlers publish now is tied to this message
        outputs = slot.spare
        if outputs is None or (outputs.staged is not None) != self.staging:
            outputs = Outputs(self.staging)
        else:
            slot.spare = None
        slot.outputs = outputs
        try:
            self._run_all(route, data, record, message, progress, errors, on_exception, outputs)
        finally:
            slot.outputs = None
        if not outputs.sent:  # nothing refers to it: the next message may take it
            slot.spare = outputs
        if not errors or self.always_ack:
            # committed only once its outputs are confirmed and its dedup entries durable
            return Verdict(DispatchOutcome.ACKNOWLEDGED, outputs=outputs) if outputs.sent else ACK
        failing = [name for _, name in route if not progress.get(name)]
        failing += [e.consumer_name for e in errors if isinstance(e, ConsumerError)]
        self._remember(message, progress)
        return self._failed(message, errors, failing)

    def _decoder(self, serializer_id: int, manifest: str) -> Callable[[bytes], Any]:
        """The decoder of ``manifest`` by serializer ``serializer_id``, remembered.

        Raises:
            UnknownSerializerError: no serializer has that id.
        """
        serializer = self.serializer_registry.get_serializer_by_id(serializer_id)
        decode = serializer.decoder(manifest)
        if len(self._decoders) < _DECODERS_KEPT:
            self._decoders[(serializer_id, manifest)] = decode
        return decode

    def _run_all(
        self,
        route: _Route,
        data: Any,
        record: Record,
        message: Message,
        progress: dict[str, bool],
        errors: list[Exception],
        on_exception: ExceptionCallback | None,
        outputs: Outputs,
    ) -> None:
        """Run every chosen consumer; errors are appended to ``errors`` and reported."""
        observer = self.observer
        if self._dedup or progress:
            for consumer, name in route:
                outputs.consumer = name
                result = self._run(consumer, name, data, record, message, progress)
                if isinstance(result, Exception):
                    errors.append(result)
                    report(on_exception, result)
                if observer is not None:
                    observer.consumer_outcome(
                        name, "failure" if isinstance(result, Exception) else result
                    )
        else:  # the common case, inlined: no dedup store and a first delivery
            staging = outputs.staged is not None
            for consumer, name in route:
                outputs.consumer = name
                before = outputs.sent
                try:
                    returned = consumer.process(data, message_id=record.message_id, record=record)
                    if returned is not None:
                        self._await(returned)
                except Exception as exc:  # noqa: BLE001 - policy: see _run
                    error = consumer_error(name, message, exc, self._fields(message, record))
                    errors.append(error)
                    report(on_exception, error)
                    if observer is not None:
                        observer.consumer_outcome(name, "failure")
                else:
                    # staged outputs die with a failed delivery: the consumer must run again
                    if not (staging and outputs.sent != before):
                        progress[name] = True
                    if observer is not None:
                        observer.consumer_outcome(name, "success")

    def outputs_settled(self, message: Message, outputs: Outputs) -> Verdict:
        """The verdict of a message whose handlers succeeded, once its outputs are settled.

        Every output confirmed: the deferred dedup entries are stored and it is acknowledged.
        An output refused: the message failed like a failing consumer (retried, then
        dead-lettered naming the output topic and the broker's error).
        """
        if outputs.failures:
            failing = list(dict.fromkeys(f.split(": ", 1)[0] for f in outputs.failures))
            refused = ProduceError("; ".join(outputs.failures[:3]))
            error = ConsumerError(failing[0], message, refused)
            error.__cause__ = refused
            return self._failed(message, [error], failing)
        if not outputs.deferred:
            return ACK
        token = set_outputs(outputs)  # staging outputs take the entries into the transaction
        try:
            for key, partition in outputs.deferred:
                try:
                    self.cache.store(key, key, partition=partition)
                except Exception as exc:  # noqa: BLE001 - policy as in _run: retried, never lost
                    return self._failed(message, [store_error("write", key, message, exc)], [])
        finally:
            reset_outputs(token)
        return ACK

    def _failed(self, message: Message, errors: list[Exception], failing: list[str]) -> Verdict:
        if self.retry.is_exhausted(message.attempt) and not all(map(may_pass, errors)):
            reason = DeadLetterReason.from_error(
                errors[-1], message.attempt, tuple(dict.fromkeys(failing))
            )
            return Verdict(DispatchOutcome.DEAD_LETTERED, reason)
        return Verdict(DispatchOutcome.RETRIED, delay=self.retry.delay(message.attempt))

    def forget(self, message: Message) -> None:
        """``message`` is finished (dead-lettered): drop its remembered progress."""
        if self._remembered:
            self._recall(message)

    def _route(self, manifest: str, message: Message, errors: list[Exception]) -> _Route:
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
        record: Record,
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
        key = f"{name}.{record.message_id}" if self._dedup else ""
        outcome = "success" if stored is None else "duplicate"
        if stored is None:
            if self._dedup:
                try:
                    seen = self.cache.get(key, partition=message.partition) is not None
                except Exception as exc:  # noqa: BLE001 - policy in the docstring
                    return store_error("read", key, message, exc)
                if seen:
                    progress[name] = True
                    return "duplicate"
            outputs = current_outputs()
            before = 0 if outputs is None else outputs.sent
            try:
                returned = consumer.process(data, message_id=record.message_id, record=record)
                if returned is not None:
                    self._await(returned)
            except Exception as exc:  # noqa: BLE001 - policy in the docstring
                return consumer_error(name, message, exc, self._fields(message, record))
            if outputs is not None and outputs.sent != before:
                if self._dedup:  # stored once they are durable (or in their transaction)
                    outputs.deferred.append((key, message.partition))
                    return outcome
                if outputs.staged is not None:
                    return outcome  # staged outputs die with a failed delivery: run it again
            stored = progress[name] = not self._dedup
        if not stored:
            try:
                self.cache.store(key, key, partition=message.partition)
            except Exception as exc:  # noqa: BLE001 - policy in the docstring
                return store_error("write", key, message, exc)
            progress[name] = True
        return outcome

    def _fields(self, message: Message, record: Record) -> dict[str, object]:
        """JSON log fields locating a message: topic, partition, offset, message_id, queue."""
        return {
            "topic": message.topic,
            "partition": message.partition,
            "offset": message.offset,
            "message_id": record.message_id,
            "queue": self.queue,
        }

    def _await(self, returned: Any) -> None:
        """Run what a handler returned: await an awaitable; refuse what cannot be run.

        Raises:
            TypeError: a generator or async generator (a handler with ``yield``): its body
                would never run, so the message must fail, not be acknowledged.
        """
        if isawaitable(returned):
            self.event_loop.run(returned)
        elif isasyncgen(returned) or isgenerator(returned):
            raise TypeError(
                f"the handler returned a {type(returned).__name__} (it contains 'yield'): its "
                "body never runs; a handler returns None or an awaitable"
            )

    def _record(self, message: Message, message_id: str) -> Record:
        key: Any = message.key
        if key is not None and self._key_decoder is not None:
            key = self._key_decoder(key)
        record: Record = _new_tuple(  # Record(...), once per message
            Record,
            (
                message.topic,
                message.partition,
                message.offset,
                key,
                message.headers,
                message.timestamp_ms,
                message_id,
                message.attempt,
            ),
        )
        return record

    def close(self) -> None:
        """Stop the event loop of async consumers, if it was started."""
        self.event_loop.close()

    def _remember(self, message: Message, progress: dict[str, bool]) -> None:
        with self._memory_lock:
            self._remembered[(message.topic, message.partition, message.offset)] = progress
            while len(self._remembered) > self._remembered_limit:
                self._remembered.popitem(last=False)

    def _recall(self, message: Message) -> dict[str, bool] | None:
        with self._memory_lock:
            return self._remembered.pop((message.topic, message.partition, message.offset), None)
