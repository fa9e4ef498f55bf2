"""KafkaSubscription: one consumer-group member that commits only what is done.

Contract:

* auto-commit and auto offset store are off; what may be committed is decided by the
  subscription's :class:`~service.backends.checkpoint.Checkpoint` (per partition, never
  past a message that is not done; never before the commit gates pass);
* commits are asynchronous, every ``commit_every`` done messages or ``commit_interval``
  seconds, and synchronous when partitions are revoked and on :meth:`close`;
* :meth:`redeliver` holds the message's partition (paused) and, when the redelivery is due,
  seeks back to the lowest offset awaiting one; records re-read that are done or still in
  flight are skipped, so two retries in one partition are both kept;
* every rebalance goes through one path: listeners first (the loop settles started work;
  the dedup store restores or drops), then the checkpoint (assign afresh / commit and
  forget / forget without committing), and the pause state of the partitions is reset,
  because librdkafka keeps a partition's pause flag across unassign and assign;
* a dead letter is judged by its own delivery report; a record the dead-letter topic
  refuses for good is written without its payload, and if even that is refused the
  subscription raises :class:`~service.errors.DeadLetterRefusedError`.

Exactly-once (the binding's ``exactly_once``): the checkpoint's committer is the member's
:class:`~service.backends.kafka.transactions.Transaction`. Handlers' outputs, dead letters
and dedup entries are staged with their message's offset and written in the transaction
that commits it, every ``interval`` seconds or ``max_messages`` done messages and on
revocation. A transaction that fails is aborted and every assigned partition is *rewound*:
listeners see a loss (work in hand is abandoned, the dedup store drops its memory), the
consumer seeks to the committed offsets, and the partitions start afresh as if assigned
again. A rewind from inside a revocation is carried out at the next poll.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka import Message as KafkaMessage

from service.backends.base import (
    CommitGate,
    DeadLetterReason,
    Subscription,
    SubscriptionListener,
)
from service.backends.base import TopicPartition as Partition
from service.backends.checkpoint import Checkpoint
from service.backends.kafka.connection import ConnectionWatch, librdkafka_logger
from service.backends.kafka.errors import translate
from service.backends.kafka.transactions import Transaction
from service.backends.outputs import StagedRecord
from service.errors import (
    BrokerUnavailableError,
    CommitError,
    DeadLetterRefusedError,
    ProduceError,
    TransactionAbortedError,
)
from service.messages import Message

if TYPE_CHECKING:
    from service.backends.kafka.backend import KafkaBackend, QueueBinding

__all__ = ["KafkaSubscription"]

logger = logging.getLogger(__name__)

LAG_INTERVAL = 5.0  # seconds between lag measurements
_IGNORED_CODES = frozenset({KafkaError._PARTITION_EOF})
_FALLBACK_KEY_LIMIT = 1024  # bytes of the original key kept on a payload-less dead letter
_REWIND_RETRY_TIMEOUT = 1.0  # seconds a retried read of committed offsets may block a poll
_REWIND_RETRY_INTERVAL = 1.0  # seconds between two retried reads


class KafkaSubscription(Subscription):
    """A confluent-kafka ``Consumer`` in the queue's group, settled message by message."""

    def __init__(
        self,
        backend: KafkaBackend,
        queue_name: str,
        binding: QueueBinding,
        config: dict[str, Any],
    ) -> None:
        self._backend = backend
        self.queue_name = queue_name
        self.binding = binding
        self._watch = ConnectionWatch(f"queue {queue_name!r}")
        self._consumer = Consumer(
            {
                "logger": librdkafka_logger(),
                **config,
                "error_cb": self._watch.on_error,
                "on_commit": self._on_commit,
            }
        )
        exactly_once = binding.exactly_once
        self._checkpoint = Checkpoint(
            self,
            commit_every=exactly_once.max_messages if exactly_once else backend.commit_every,
            commit_interval=exactly_once.interval if exactly_once else backend.commit_interval,
            gate_timeout=backend.dead_letter_timeout,
            confirms_later=exactly_once is None,  # asynchronous commits, answered in _on_commit
        )
        self._transaction: Transaction | None = None
        self.transactional = exactly_once is not None
        self._epoch = 0  # bumped by a rewind: records fetched before it are not delivered
        self._rewind_keys: list[Partition] | None = None  # dropped, to start again from committed
        self._rewind_retry_at = 0.0  # monotonic: when a postponed restart is tried again
        self._refused: dict[tuple[str, int, int], str] = {}  # outputs refused, by input
        self._dlq_refusals: dict[tuple[str, int, int], int] = {}  # dead letters refused
        self._listeners: list[SubscriptionListener] = []
        self._held: set[Partition] = set()  # paused by the loop (back-pressure)
        self._waiting: set[Partition] = set()  # paused until a redelivery is due
        self._lag: dict[Partition, int] = {}
        self._missing_reported: set[str] = set()  # topic errors already logged once
        self._lag_checked = 0.0
        self.assigned_once = False
        """Whether the group gave this member an assignment (possibly empty) yet."""
        self._closed = False
        self._dead_letters_unavailable_until = 0.0
        try:
            self._wait_for_brokers(backend.startup_timeout)
            if exactly_once is not None:
                self._transaction = Transaction(
                    backend.new_producer,
                    exactly_once.transactional_id,
                    timeout=exactly_once.timeout,
                    limit_of=backend.max_message_bytes,
                    settings={
                        "transaction.timeout.ms": int(exactly_once.transaction_timeout * 1000),
                        **backend.producer_settings,
                    },
                )
            self._consumer.subscribe(
                list(binding.topics),
                on_assign=self._on_assign,
                on_revoke=self._on_revoke,
                on_lost=self._on_lost,
            )
        except BaseException:
            self._consumer.close()
            if self._transaction is not None:
                self._transaction.close()
            raise

    def _wait_for_brokers(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._consumer.list_topics(timeout=min(1.0, timeout))
                return
            except KafkaException as exc:
                self._consumer.poll(0)  # serve error_cb: an authentication failure is final
                if self._watch.fatal is not None:
                    raise translate(
                        self._watch.fatal, f"joining queue {self.queue_name!r}"
                    ) from exc
                if time.monotonic() >= deadline:
                    raise BrokerUnavailableError(
                        f"queue {self.queue_name!r}: no broker of "
                        f"{self._backend.bootstrap_servers} answered within {timeout:g}s; "
                        "check bootstrap_servers and that Kafka is up"
                    ) from exc

    # -- listeners and gates --------------------------------------------------------------
    def add_listener(self, listener: SubscriptionListener) -> None:
        """Call ``listener`` on every rebalance from now on (in the order added)."""
        self._listeners.append(listener)

    def add_gate(self, gate: CommitGate) -> None:
        """Commit no offset before ``gate`` says the side data below it is durable."""
        self._checkpoint.add_gate(gate)

    def serve_outputs(self) -> None:
        """Serve the producer's delivery reports (outputs of handlers)."""
        self._backend.serve()

    def maintain(self) -> None:
        """Seek what is due for redelivery and commit what may be; fetch nothing.

        Raises:
            CommitError: a commit gate failed.
        """
        self._seek_due()
        self._backend.serve()
        self._commit_due()

    def _commit_due(self) -> None:
        """Commit what may be; an aborted transaction rewinds (now, or the pending one)."""
        if self._rewind_keys is not None and time.monotonic() >= self._rewind_retry_at:
            keys, self._rewind_keys = self._rewind_keys, None
            retry = self._rewind_retry_at > 0  # set by a postponement: not the first try
            self._restart_from_committed(keys, retry=retry)
        try:
            self._checkpoint.maybe_commit()
        except TransactionAbortedError as exc:
            self._rewind(exc)

    # -- rebalances: one path, listeners then the checkpoint ------------------------------
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        keys = [(tp.topic, tp.partition) for tp in partitions]
        self.assigned_once = True
        self._checkpoint.assign(keys, self._notes(partitions))
        self._reset_pause(partitions)
        logger.info("queue %r assigned %s", self.queue_name, _names(partitions))
        for listener in self._listeners:
            listener.on_assigned(keys)

    def _notes(self, partitions: list[TopicPartition]) -> dict[Partition, str]:
        """The commit notes (failed attempts) stored with the partitions' committed offsets."""
        if not partitions:
            return {}
        try:
            committed = self._consumer.committed(partitions, timeout=10)
        except KafkaException as exc:
            logger.warning(
                "queue %r: committed offsets unreadable (%s): attempts of earlier failures "
                "start again from 1",
                self.queue_name,
                exc,
            )
            return {}
        return {(tp.topic, tp.partition): tp.metadata for tp in committed if tp.metadata}

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._revoke([(tp.topic, tp.partition) for tp in partitions])
        logger.info("queue %r revoked %s", self.queue_name, _names(partitions))

    def _revoke(self, keys: list[Partition]) -> None:
        try:
            for listener in self._listeners:
                listener.on_revoked(keys)
            self._checkpoint.revoke(keys)
        except TransactionAbortedError as exc:
            # the revoked partitions are forgotten (the next owner redoes them); the others
            # lost their uncommitted work too: dropped now, so nothing of them is committed,
            # and started again from their committed offsets at the next poll (not here)
            self._checkpoint.lose(keys)
            kept = self._abandon(exc)
            if kept:
                self._rewind_keys = sorted({*(self._rewind_keys or ()), *kept})
        finally:
            self._forget_refusals(keys)
            if self._transaction is not None:
                self._transaction.drop(keys)
            self._reset_pause([TopicPartition(t, p) for t, p in keys])

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        keys = [(tp.topic, tp.partition) for tp in partitions]
        try:
            for listener in self._listeners:
                listener.on_lost(keys)
            self._checkpoint.lose(keys)
        finally:
            self._forget_refusals(keys)
            if self._transaction is not None:
                self._transaction.drop(keys)
            self._reset_pause(partitions)
        logger.warning("queue %r lost %s without commit", self.queue_name, _names(partitions))

    def _reset_pause(self, partitions: list[TopicPartition]) -> None:
        """Forget and clear every pause of ``partitions`` (librdkafka keeps its flag)."""
        for tp in partitions:
            key = (tp.topic, tp.partition)
            self._held.discard(key)
            self._waiting.discard(key)
        if partitions:
            try:
                self._consumer.resume([TopicPartition(tp.topic, tp.partition) for tp in partitions])
            except KafkaException as exc:
                logger.debug("queue %r: resume on rebalance: %s", self.queue_name, exc)

    # -- polling ------------------------------------------------------------------------
    def poll(self, max_messages: int, timeout: float) -> Iterator[Message]:
        """Fetch up to ``max_messages``; never ``None`` (a Kafka queue does not end).

        Raises:
            AuthenticationError, AuthorizationError, BackendError: a fatal client error.
            CommitError: a commit gate failed (e.g. dedup entries not durable).
        """
        if self._watch.fatal is not None:
            raise translate(self._watch.fatal, f"consuming queue {self.queue_name!r}")
        self._seek_due()
        self._backend.serve()  # outputs' delivery reports, before the checkpoint looks
        self._commit_due()
        if time.monotonic() - self._lag_checked >= LAG_INTERVAL:
            self._measure_lag()
        # consume() waits for a full batch until the timeout: take what is there at once,
        # else wait for the first message only, so a quiet topic adds no latency
        records = self._consumer.consume(max_messages, 0)
        if not records:
            first = self._consumer.poll(timeout)
            if first is not None:
                records = [first, *self._consumer.consume(max_messages - 1, 0)]
        if records:
            self._watch.reachable()
        return self._accept(records)

    def _accept(self, records: Sequence[KafkaMessage]) -> Iterator[Message]:
        """Yield each record the checkpoint accepts, judged when it is reached.

        (A settle between two records may make the later ones stale: their partition now
        waits for a redelivery. Revocation happens only inside consume(), never here.)
        """
        accept = self._checkpoint.accept
        new_tuple = tuple.__new__
        epoch = self._epoch
        for record in records:
            if self._epoch != epoch:
                return  # rewound meanwhile: these records come again from the committed offsets
            error = record.error()
            if error is not None:
                self._on_record_error(error)
                continue
            # consumed records always carry topic, partition, offset and list headers
            topic: str = record.topic()  # type: ignore[assignment]
            partition: int = record.partition()  # type: ignore[assignment]
            offset: int = record.offset()  # type: ignore[assignment]
            attempt = accept((topic, partition), offset)
            if not attempt:
                self._hold_if_waiting((topic, partition))
                continue
            timestamp = record.timestamp()[1]
            headers = record.headers()
            yield new_tuple(  # Message(...) without its Python-level __new__: once per record
                Message,
                (
                    topic,
                    record.value(),
                    tuple(headers) if headers else (),
                    record.key(),
                    partition,
                    offset,
                    timestamp if timestamp > 0 else None,
                    attempt,
                ),
            )

    def _hold_if_waiting(self, key: Partition) -> None:
        if key not in self._waiting and self._checkpoint.is_waiting(key):
            self._waiting.add(key)
            self._consumer.pause([TopicPartition(key[0], key[1])])

    def _seek_due(self) -> None:
        for key, offset in self._checkpoint.due_seeks():
            tp = TopicPartition(key[0], key[1], offset)
            try:
                self._consumer.seek(tp)
            except KafkaException as exc:
                logger.warning("queue %r: seek %s failed: %s", self.queue_name, key, exc)
            self._waiting.discard(key)
            if key not in self._held:
                self._consumer.resume([TopicPartition(key[0], key[1])])

    def _on_record_error(self, error: KafkaError) -> None:
        code = error.code()
        if code in _IGNORED_CODES:
            logger.debug("queue %r: %s", self.queue_name, error.str())
            return
        if code == KafkaError.UNKNOWN_TOPIC_OR_PART:  # not created yet, or deleted meanwhile
            if error.str() not in self._missing_reported:
                self._missing_reported.add(error.str())
                logger.warning(
                    "queue %r: %s (topics %s); waiting for it to exist",
                    self.queue_name,
                    error.str(),
                    ", ".join(self.binding.topics),
                )
            return
        if error.fatal() or code in (
            KafkaError.TOPIC_AUTHORIZATION_FAILED,
            KafkaError.GROUP_AUTHORIZATION_FAILED,
        ):
            raise translate(error, f"consuming queue {self.queue_name!r}")
        self._watch.on_error(error)

    # -- back-pressure ----------------------------------------------------------------------
    def pause(self, partitions: list[Partition]) -> None:
        """Stop fetching ``partitions`` until :meth:`resume` (a redelivery keeps its own hold)."""
        fresh = [p for p in partitions if p not in self._held]
        self._held.update(fresh)
        if fresh:
            self._consumer.pause([TopicPartition(t, p) for t, p in fresh])

    def resume(self, partitions: list[Partition]) -> None:
        """Fetch ``partitions`` again, unless one waits for a redelivery."""
        back = [p for p in partitions if p in self._held]
        self._held.difference_update(back)
        ready = [TopicPartition(t, p) for t, p in back if (t, p) not in self._waiting]
        if ready:
            self._consumer.resume(ready)

    # -- observing ------------------------------------------------------------------------
    @property
    def broker_reachable(self) -> bool:
        """Whether the broker answers.

        False from a transport error until a message or a commit gets through again, and
        while partitions wait to be rewound (their committed offsets unreadable).
        """
        return not self._watch.is_down and self._rewind_keys is None

    @property
    def paused(self) -> set[Partition]:
        """The partitions held by back-pressure or waiting for a redelivery."""
        return self._held | self._waiting

    def lag(self) -> dict[Partition, int]:
        """Messages behind the end, per assigned partition (refreshed every few seconds)."""
        return dict(self._lag)

    def _measure_lag(self) -> None:
        self._lag_checked = time.monotonic()
        # idle and once unreachable: ask, so readiness comes back (a waiting rewind's own
        # retries say when its broker answers)
        if self._watch.is_down and self._rewind_keys is None:
            try:
                self._consumer.list_topics(timeout=0.5)
            except KafkaException:
                return
            self._watch.reachable()
        lag: dict[Partition, int] = {}
        try:
            owned = [TopicPartition(t, p) for t, p in self._checkpoint.partitions]
            for tp in self._consumer.position(owned):
                _, high = self._consumer.get_watermark_offsets(tp, cached=True)
                if high >= 0:
                    lag[(tp.topic, tp.partition)] = max(high - max(tp.offset, 0), 0)
        except KafkaException as exc:
            logger.debug("queue %r: lag not measured: %s", self.queue_name, exc)
            return
        self._lag = lag

    # -- settling -------------------------------------------------------------------------
    def acknowledge(self, message: Message, staged: Sequence[StagedRecord] = ()) -> None:
        """Mark ``message`` done; its offset is committed with the next batch.

        ``staged`` (exactly-once): its handlers' outputs, written in the transaction that
        commits its offset.
        """
        key = (message.topic, message.partition)
        if staged and self._transaction is not None and key in self._checkpoint.partitions:
            self._transaction.stage(key, message.offset, staged)
        if self._refused:
            self._refused.pop((message.topic, message.partition, message.offset), None)
        self._checkpoint.done(key, message.offset)

    def refusal(self, message: Message) -> str | None:
        """Why the broker refused this message's outputs in an aborted transaction."""
        if not self._refused:
            return None
        return self._refused.get((message.topic, message.partition, message.offset))

    def redeliver(self, message: Message, delay: float = 0.0) -> None:
        """Hold the partition; after ``delay`` read it again from the lowest awaited offset."""
        key = (message.topic, message.partition)
        self._checkpoint.redeliver(key, message.offset, message.attempt, delay)
        self._hold_if_waiting(key)

    def release(self, message: Message) -> None:
        """Deliver ``message`` again (same attempt), behind any redelivery before it."""
        key = (message.topic, message.partition)
        self._checkpoint.release(key, message.offset, message.attempt)
        self._hold_if_waiting(key)

    def dead_letter(self, message: Message, reason: DeadLetterReason) -> None:
        """Write the dead letter, judged by its own delivery report; then mark it done.

        A record the topic refuses for good (too large, invalid) is written again without
        its payload (``dlq.payload_dropped`` says why; the original topic, partition and
        offset are in the headers).

        Raises:
            ProduceError: a refusal that may pass; the message is not done.
            DeadLetterRefusedError: even the dead letter without payload is refused.
        """
        key = (message.topic, message.partition)
        if key not in self._checkpoint.partitions:
            return  # revoked or lost meanwhile: the next owner decides again
        if self._transaction is not None:
            self._stage_dead_letter(message, reason)
            return
        topic, timeout = self.binding.dead_letter_topic, self._backend.dead_letter_timeout
        if time.monotonic() < self._dead_letters_unavailable_until:
            # the last one was not confirmed in time: do not block the polling thread again
            # for each message (the member would leave its group); it is redelivered
            raise ProduceError(f"dead-letter topic {topic!r} unavailable; retried later")
        try:
            self._backend.publish_confirmed(
                topic, message.value, key=message.key, headers=reason.headers_for(message),
                timeout=timeout,
            )  # fmt: skip
        except ProduceError as exc:
            if not exc.permanent:
                self._dead_letters_unavailable_until = time.monotonic() + min(timeout, 5.0)
                raise
            logger.error(
                "dead letter of %s refused by %s (%s); writing it without its payload",
                message.location,
                topic,
                exc,
            )
            original_key = _fallback_key(message)
            try:
                self._backend.publish_confirmed(
                    topic,
                    None,
                    key=original_key,
                    headers=reason.headers_for(message, payload_dropped=str(exc)),
                    timeout=timeout,
                )
            except ProduceError as fallback:
                if not fallback.permanent:
                    raise
                raise DeadLetterRefusedError(
                    f"{message.location}: the dead-letter topic {topic!r} refuses the record "
                    f"({exc}) and its payload-less copy ({fallback}); the message is neither "
                    "processed nor dead-lettered, so the queue stops. Raise the topic's "
                    "max.message.bytes or fix its configuration, then restart."
                ) from fallback
        self._checkpoint.done(key, message.offset)

    def _stage_dead_letter(self, message: Message, reason: DeadLetterReason) -> None:
        """Exactly-once: stage the dead letter with the message's offset, then mark it done.

        A dead letter the topic refused in an aborted transaction is staged again without
        its payload; if that is refused too, :class:`DeadLetterRefusedError` stops the queue.
        """
        key = (message.topic, message.partition)
        location = (message.topic, message.partition, message.offset)
        refusals = self._dlq_refusals.get(location, 0)
        topic = self.binding.dead_letter_topic
        if refusals >= 2:
            raise DeadLetterRefusedError(
                f"{message.location}: the dead-letter topic {topic!r} refuses the record and "
                f"its payload-less copy ({self._refused.get(location)}); the message is "
                "neither processed nor dead-lettered, so the queue stops. Raise the topic's "
                "max.message.bytes or fix its configuration, then restart."
            )
        if refusals == 1:
            why = self._refused.get(location, "refused by the dead-letter topic")
            original_key = _fallback_key(message)
            record = StagedRecord(
                topic, None, original_key, reason.headers_for(message, payload_dropped=why)
            )
        else:
            record = StagedRecord(topic, message.value, message.key, reason.headers_for(message))
        assert self._transaction is not None  # noqa: S101 - exactly-once only
        self._transaction.stage(key, message.offset, (record,))
        self._checkpoint.done(key, message.offset)

    # -- exactly-once: rewinding after an aborted transaction -------------------------------
    def _rewind(self, aborted: TransactionAbortedError) -> None:
        """Start every assigned partition again from its committed offset.

        Listeners see a loss then an assignment (work in hand abandoned, dedup memory
        restored from what is committed); the failed attempts are read back from the
        committed notes. Records refused for good are remembered by input offset, so that
        message fails (retried, then dead-lettered) instead of aborting every transaction.

        Raises:
            CommitError: the committed offsets could not be read or sought to (the queue
                stops rather than go on from a position it cannot trust).
        """
        self._restart_from_committed(self._abandon(aborted))

    def _abandon(self, aborted: TransactionAbortedError) -> list[Partition]:
        """Drop every assigned partition's state after ``aborted``; returns them."""
        self._epoch += 1
        keys = sorted(self._checkpoint.partitions)
        logger.warning(
            "queue %r: %s; rewinding %s to the committed offsets",
            self.queue_name,
            aborted,
            ", ".join(f"{t}[{p}]" for t, p in keys) or "nothing",
        )
        if self._transaction is not None:
            self._transaction.drop()
        for listener in self._listeners:
            listener.on_lost(keys)
        self._checkpoint.lose(keys)
        dead_letters = self.binding.dead_letter_topic
        for location, why in aborted.refused.items():
            self._refused[location] = why
            if f"{dead_letters!r}" in why:
                self._dlq_refusals[location] = self._dlq_refusals.get(location, 0) + 1
        return keys

    def _restart_from_committed(self, keys: list[Partition], retry: bool = False) -> None:
        """Seek ``keys`` still assigned to their committed offsets and assign them afresh.

        When the committed offsets cannot be read for a transient reason (the coordinator
        unreachable or moving, as in a broker freeze; an open transaction's offsets), the
        partitions stay dropped and paused, readiness says the broker is unreachable, and the
        restart is tried again every second from the next poll on, each try blocking the poll
        at most a second: nothing of them is delivered or committed meanwhile.

        Raises:
            CommitError: the committed offsets could not be read for a lasting reason
                (the queue stops rather than go on from a position it cannot trust).
        """
        if keys:
            try:
                owned = {(tp.topic, tp.partition) for tp in self._consumer.assignment()}
            except KafkaException:
                owned = set(keys)
            keys = [key for key in keys if key in owned and key not in self._checkpoint.partitions]
        if not keys:
            self._rewind_retry_at = 0.0
            return
        tps = [TopicPartition(t, p) for t, p in keys]
        timeout = _REWIND_RETRY_TIMEOUT if retry else self._backend.startup_timeout
        try:
            committed = self._consumer.committed(tps, timeout=timeout)
            unreadable = [tp for tp in committed if tp.error is not None]
            if unreadable:  # never seek such a partition (-1001 would mean its beginning)
                raise KafkaException(unreadable[0].error)
            for tp in committed:
                offset = tp.offset if tp.offset >= 0 else OFFSET_BEGINNING
                self._consumer.seek(TopicPartition(tp.topic, tp.partition, offset))
        except KafkaException as exc:
            error = translate(exc, "rewind")
            if not isinstance(error, BrokerUnavailableError):
                raise CommitError(
                    f"queue {self.queue_name!r}: after an aborted transaction, the committed "
                    f"offsets could not be read or sought to ({error}); "
                    "stopping rather than go on from an untrusted position"
                ) from exc
            self._postpone_restart(keys, exc, retry)
            return
        self._rewind_retry_at = 0.0
        self._watch.reachable()
        notes = {(tp.topic, tp.partition): tp.metadata for tp in committed if tp.metadata}
        self._checkpoint.assign(keys, notes)
        self._reset_pause(tps)
        for listener in self._listeners:
            listener.on_assigned(keys)

    def _postpone_restart(self, keys: list[Partition], exc: KafkaException, retry: bool) -> None:
        """Keep ``keys`` dropped and paused; a poll a second from now tries their restart."""
        tps = [TopicPartition(t, p) for t, p in keys]
        if not retry:  # once: the retries' failures say the same
            logger.warning(
                "queue %r: after an aborted transaction, the committed offsets are unreadable "
                "for now (%s); %s stay paused until they can be read",
                self.queue_name,
                translate(exc, "rewind"),
                _names(tps),
            )
        self._watch.on_error(exc.args[0])  # readiness: the broker is down until it answers
        self._rewind_keys = sorted({*(self._rewind_keys or ()), *keys})
        self._rewind_retry_at = time.monotonic() + _REWIND_RETRY_INTERVAL
        try:
            self._consumer.pause(tps)
        except KafkaException as pause_failed:
            logger.debug("queue %r: pause while rewinding: %s", self.queue_name, pause_failed)

    def _forget_refusals(self, keys: list[Partition]) -> None:
        if not (self._refused or self._dlq_refusals):
            return
        gone = set(keys)
        for table in (self._refused, self._dlq_refusals):
            for location in [loc for loc in table if (loc[0], loc[1]) in gone]:
                del table[location]

    # -- committing -------------------------------------------------------------------
    def commit_offsets(self, offsets: Mapping[Partition, int], wait: bool) -> bool:
        """Send ``offsets`` to the group coordinator (the checkpoint's committer).

        A refused commit is logged and answered False: the offsets are committed again
        later, or the messages are delivered again to the next owner. Exactly-once: the
        offsets and the records staged below them are committed in one transaction.

        Raises:
            TransactionAbortedError: exactly-once, the transaction was aborted.
        """
        if self._transaction is not None:
            self._transaction.commit(offsets, self._checkpoint.note, self._consumer)
            self._watch.reachable()
            return True
        note = self._checkpoint.note
        tps = [TopicPartition(t, p, o, note((t, p))) for (t, p), o in offsets.items()]
        try:
            if not wait:
                self._consumer.commit(offsets=tps, asynchronous=True)
                return True
            refused = [
                tp for tp in self._consumer.commit(offsets=tps, asynchronous=False) if tp.error
            ]
        except KafkaException as exc:
            logger.warning(
                "queue %r: commit failed (the messages will be delivered again): %s",
                self.queue_name,
                translate(exc, "commit"),
            )
            return False
        if refused:
            logger.warning(
                "queue %r: commit refused for %s (delivered again): %s",
                self.queue_name,
                _names(refused),
                refused[0].error,
            )
            return False
        return True

    def _on_commit(self, error: KafkaError | None, partitions: list[TopicPartition]) -> None:
        failed = partitions if error is not None else [tp for tp in partitions if tp.error]
        reason = error if error is not None else next((tp.error for tp in failed), None)
        if error is None:
            self._watch.reachable()
            self._checkpoint.commit_confirmed(
                {(tp.topic, tp.partition): tp.offset for tp in partitions if not tp.error}
            )
        if failed and reason is not None:
            logger.warning(
                "queue %r: commit of %s failed, sent again after the commit interval: %s",
                self.queue_name,
                _names(failed),
                reason.str(),
            )
            self._checkpoint.commit_failed([(tp.topic, tp.partition) for tp in failed])

    def close(self) -> None:
        """Revoke what is owned (listeners, then the commit), and leave the group."""
        if self._closed:
            return
        self._closed = True
        try:
            self._revoke(sorted(self._checkpoint.partitions))
        finally:
            self._rewind_keys = None  # dropped already: the next owner redoes them
            try:
                self._consumer.close()
            finally:
                if self._transaction is not None:
                    self._transaction.close()


def _fallback_key(message: Message) -> bytes | None:
    """The key of a payload-less dead letter: the original, unless it is too large too."""
    key = message.key
    return None if key is not None and len(key) > _FALLBACK_KEY_LIMIT else key


def _names(partitions: list[TopicPartition]) -> str:
    return ", ".join(f"{tp.topic}[{tp.partition}]" for tp in partitions) or "nothing"
