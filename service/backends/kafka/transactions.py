"""Transaction: the transactional producer of one exactly-once member, and what it stages.

Contract (KIP-447, one transactional producer per group member):

* :meth:`Transaction.stage` keeps, per input partition and offset, the records a done
  message must write (its handlers' outputs, its dead letter, its dedup entries). Nothing is
  sent then.
* :meth:`Transaction.commit` is the checkpoint's committer: for each partition it writes the
  staged records of the offsets *below* the position it commits (a done message above an
  undone one keeps its records staged: they must not be committed before its offset is),
  then sends the offsets with the consumer's group metadata and commits, all in one
  transaction. Either all of it is visible to ``read_committed`` readers, or none.
* A transaction that fails is aborted and :class:`~service.errors.TransactionAbortedError`
  raised: the caller rewinds to the committed offsets and drops what is staged
  (:meth:`Transaction.drop`). A record the broker refused is named in the error's
  ``refused`` (by its input offset), so that message fails like a handler would.
* Fencing: a fatal error (another producer took the transactional id, or the producer's
  epoch is stale) closes the producer and starts a new one under the next *incarnation* of
  the id (``<id>.1``, ``<id>.2``, ...), so two members never fence each other in a loop;
  the error says ``fenced`` and the caller rewinds as for an abort. A zombie member (one
  the group moved on from) cannot commit: its group metadata is stale, the broker refuses
  the offsets and the transaction is aborted.
* Threads: the polling thread only.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NoReturn

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka import Message as KafkaMessage

from service.backends.base import TopicPartition as Partition
from service.backends.kafka.connection import ConnectionWatch, librdkafka_logger
from service.backends.kafka.errors import PERMANENT_PRODUCE_CODES, translate
from service.backends.outputs import StagedRecord
from service.errors import BackendError, TransactionAbortedError

__all__ = ["Transaction"]

logger = logging.getLogger(__name__)

_Staged = list[tuple[int, Sequence[StagedRecord]]]
_MISSING_TOPIC_CODES = frozenset({KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC})
_BLAMED_CODES = PERMANENT_PRODUCE_CODES | _MISSING_TOPIC_CODES  # the record's own fault
_START_PATIENCE = 120.0  # seconds a (re)start waits for a broker that does not answer
_TOPICS_RECHECKED = 16  # output topics looked up again after an abort that blames nobody
_NO_SUCH_TOPIC = "output to {topic!r} refused: UNKNOWN_TOPIC_OR_PART: no such topic"


class Transaction:
    """One member's transactional producer and the records staged for its next commit.

    Args:
        new_producer: makes a producer from settings (the backend's connection settings).
        transactional_id: the member's stable id; fencing moves it to ``<id>.<n>``.
        timeout: seconds each transactional call may take.
        settings: producer settings (``transaction.timeout.ms``, ``linger.ms``...).
        limit_of: a topic's ``max.message.bytes`` (None: unknown). A record larger is
            refused before it is sent: the broker refuses a whole batch, which would blame
            every message in it.

    Raises:
        BackendError: the producer could not be started (``init_transactions``).
    """

    def __init__(
        self,
        new_producer: Callable[[Mapping[str, Any]], Producer],
        transactional_id: str,
        *,
        timeout: float,
        settings: Mapping[str, Any] | None = None,
        limit_of: Callable[[str], int | None] = lambda topic: None,
    ) -> None:
        self._new_producer = new_producer
        self._limit_of = limit_of
        self._base_id = transactional_id
        self._incarnation = 0
        self._timeout = timeout
        self._settings = dict(settings or {})
        self._staged: dict[Partition, _Staged] = {}
        self._known_topics: set[str] = set()
        self._writers: dict[str, tuple[str, int, int]] = {}  # topic -> an input writing to it
        self._open = False
        self.watch = ConnectionWatch("transactional producer")
        self.commits = 0
        """Transactions committed."""
        self.aborts = 0
        """Transactions aborted."""
        self._producer = self._start()

    @property
    def transactional_id(self) -> str:
        """The id the producer runs under now."""
        if self._incarnation == 0:
            return self._base_id
        return f"{self._base_id}.{self._incarnation}"

    def _start(self) -> Producer:
        producer = self._new_producer(
            {
                "linger.ms": 5,
                "logger": librdkafka_logger(),
                **self._settings,
                "error_cb": self.watch.on_error,
                "transactional.id": self.transactional_id,
                "enable.idempotence": True,
                "acks": "all",
            }
        )
        # a broker that does not answer now (frozen, restarting) may later: wait for it a while
        deadline = time.monotonic() + max(4 * self._timeout, _START_PATIENCE)
        while True:
            try:
                producer.init_transactions(self._timeout)
                break
            except KafkaException as exc:
                error: KafkaError = exc.args[0]
                if not error.retriable() or time.monotonic() >= deadline:
                    raise translate(
                        exc, f"starting transactions as {self.transactional_id!r}"
                    ) from exc
                logger.warning(
                    "starting transactions as %r: %s; retrying", self.transactional_id, error.str()
                )
        logger.info("transactional producer %r ready", self.transactional_id)
        return producer

    # -- staging -----------------------------------------------------------------------
    def stage(self, tp: Partition, offset: int, records: Sequence[StagedRecord]) -> None:
        """Write ``records`` in the transaction that commits ``offset`` of ``tp`` (or never)."""
        staged = self._staged.get(tp)
        if staged is None:
            staged = self._staged[tp] = []
        staged.append((offset, records))

    def drop(self, partitions: Sequence[Partition] | None = None) -> None:
        """Forget what is staged for ``partitions`` (all if None): it will not be written."""
        if partitions is None:
            self._staged.clear()
            return
        for tp in partitions:
            self._staged.pop(tp, None)

    def staged_records(self) -> int:
        """Records staged and not written yet."""
        return sum(len(records) for staged in self._staged.values() for _, records in staged)

    # -- committing --------------------------------------------------------------------
    def commit(
        self,
        offsets: Mapping[Partition, int],
        notes: Callable[[Partition], str],
        consumer: Consumer,
    ) -> None:
        """Write the staged records below ``offsets`` and the offsets, in one transaction.

        Raises:
            TransactionAbortedError: the transaction failed and was aborted (nothing of it
                is committed); ``refused`` names the input offsets whose records were refused.
        """
        producer = self._producer
        refused: dict[tuple[str, int, int], tuple[int, str]] = {}
        try:
            if not self._open:
                producer.begin_transaction()
                self._open = True
                self._writers.clear()
            self._refuse_missing_topics(producer, offsets, refused)
            for tp, position in offsets.items():
                self._write(producer, tp, position, refused)
            group = consumer.consumer_group_metadata()
            positions = [TopicPartition(t, p, o, notes((t, p))) for (t, p), o in offsets.items()]
            deadline = time.monotonic() + self._timeout  # for both calls together
            self._retrying(
                lambda left: producer.send_offsets_to_transaction(positions, group, left),
                deadline,
            )
            self._retrying(producer.commit_transaction, deadline)
        except KafkaException as exc:
            self._abort(exc, _culprit(refused))
        except BackendError as exc:  # a record refused before it was sent
            self._abort(exc, _culprit(refused))
        self._open = False
        self.commits += 1
        self.watch.reachable()

    def _write(
        self,
        producer: Producer,
        tp: Partition,
        position: int,
        refused: dict[tuple[str, int, int], tuple[int, str]],
    ) -> None:
        staged = self._staged.get(tp)
        if not staged:
            return
        kept: _Staged = []
        for offset, records in staged:
            if offset >= position:
                kept.append((offset, records))
                continue
            where = (tp[0], tp[1], offset)
            for record in records:
                self._writers.setdefault(record.topic, where)
                self._produce(producer, record, where, refused)
        if kept:
            self._staged[tp] = kept
        else:
            del self._staged[tp]

    def _produce(
        self,
        producer: Producer,
        record: StagedRecord,
        where: tuple[str, int, int],
        refused: dict[tuple[str, int, int], tuple[int, str]],
    ) -> None:
        topic = record.topic  # exists: _refuse_missing_topics looked it up before the writes
        size = _size(record)
        limit = self._limit_of(topic)
        if limit is not None and size > limit:
            refused[where] = (size, f"output to {topic!r} refused: MSG_SIZE_TOO_LARGE: "
                              f"{size} bytes, the topic takes {limit}")  # fmt: skip
            raise BackendError(f"output to {topic!r}: {size} bytes, over its {limit}")

        def on_delivery(error: KafkaError | None, message: KafkaMessage) -> None:
            # only a refusal for good is the message's fault; others (timeouts, purges on
            # abort) are retried with the whole transaction
            if error is not None and error.code() in _BLAMED_CODES:
                refused.setdefault(
                    where, (size, f"output to {topic!r} refused: {error.name()}: {error.str()}")
                )

        extra: dict[str, Any] = {}
        if record.partition is not None:
            extra["partition"] = record.partition
        while True:
            try:
                producer.produce(
                    topic,
                    record.value,
                    record.key,
                    headers=list(record.headers),
                    on_delivery=on_delivery,
                    **extra,
                )
                return
            except BufferError:
                producer.poll(0.05)  # the local queue is full: let deliveries drain it
            except KafkaException as exc:
                error = exc.args[0]
                if error.code() in _BLAMED_CODES:
                    refused.setdefault(
                        where, (size, f"output to {topic!r} refused: {error.name()}: {error.str()}")
                    )
                raise BackendError(f"output to {topic!r} not queued: {error.str()}") from exc

    def _refuse_missing_topics(
        self,
        producer: Producer,
        offsets: Mapping[Partition, int],
        refused: dict[tuple[str, int, int], tuple[int, str]],
    ) -> None:
        """Before writing: blame every input whose records go to a topic that does not exist.

        (Sent, librdkafka would hold such a record until the transaction times out and report
        it only after the abort: every transaction would abort, blaming nobody.)

        Raises:
            BackendError: some did (nothing was written: the transaction is aborted).
        """
        unknown: dict[str, list[tuple[str, int, int]]] = {}
        known = self._known_topics
        for tp, position in offsets.items():
            for offset, records in self._staged.get(tp, ()):
                if offset < position:
                    for record in records:
                        if record.topic not in known:
                            unknown.setdefault(record.topic, []).append((tp[0], tp[1], offset))
        missing = []
        for topic, writers in unknown.items():
            gone = self._missing(producer, topic)
            if gone is False:
                known.add(topic)
            elif gone:
                missing.append(topic)
                for where in writers:
                    refused[where] = (0, _NO_SUCH_TOPIC.format(topic=topic))
        if missing:
            raise BackendError(f"outputs to {', '.join(map(repr, missing))}: no such topic")

    def _missing(self, producer: Producer, topic: str) -> bool | None:
        """Whether ``topic`` does not exist (None: the brokers did not say)."""
        try:
            found = producer.list_topics(topic, timeout=min(self._timeout, 10.0)).topics.get(topic)
        except KafkaException:
            return None
        if found is None:
            return True
        if found.error is None:
            return False
        return True if found.error.code() in _MISSING_TOPIC_CODES else None

    def _retrying(self, call: Callable[[float], None], deadline: float | None = None) -> None:
        """``call(seconds left)`` again while its error is retriable, until ``deadline``.

        ``deadline`` (monotonic) defaults to the timeout from now.
        """
        if deadline is None:
            deadline = time.monotonic() + self._timeout
        while True:
            try:
                call(max(deadline - time.monotonic(), 0.1))
                return
            except KafkaException as exc:
                error: KafkaError = exc.args[0]
                if not error.retriable() or time.monotonic() >= deadline:
                    raise
                logger.warning("transaction call failed, retrying: %s", error.str())
                time.sleep(0.1)

    def _abort(
        self,
        exc: KafkaException | BackendError,
        refused: Callable[[], dict[tuple[str, int, int], str]],
    ) -> NoReturn:
        """Abort (or, fenced, restart the producer) and raise the aborted error."""
        with contextlib.suppress(KafkaException):  # a fenced producer raises its error again
            self._producer.poll(0)  # the delivery reports that say which record was refused
        blamed = refused()
        if not blamed:  # a topic deleted since it was seen holds its records until timeout
            self._known_topics.clear()
            for topic, where in list(self._writers.items())[:_TOPICS_RECHECKED]:
                if self._missing(self._producer, topic):
                    blamed[where] = _NO_SUCH_TOPIC.format(topic=topic)
                    break
        self._open = False
        self.aborts += 1
        self._staged.clear()
        error = exc.args[0] if isinstance(exc, KafkaException) else None
        fatal = isinstance(error, KafkaError) and (error.fatal() or self.watch.fatal is not None)
        text = error.str() if isinstance(error, KafkaError) else str(exc)
        if not fatal:
            try:
                self._retrying(self._producer.abort_transaction)
            except KafkaException as abort_failed:
                inner: KafkaError = abort_failed.args[0]
                fatal = inner.fatal()
                if not fatal:
                    # not abortable now (a commit still in progress, the broker silent): a
                    # new producer under the same id aborts the open transaction at its start
                    logger.warning(
                        "aborting the transaction failed (%s); restarting the producer",
                        inner.str(),
                    )
                    self._restart(new_id=False)
                    raise TransactionAbortedError(
                        f"transaction aborted ({text}); its producer restarted under the same "
                        "id, which aborts it; nothing of it is committed",
                        refused=blamed,
                    ) from exc
        if fatal:
            old = self.transactional_id
            self._restart()
            raise TransactionAbortedError(
                f"transactional producer {old!r} fenced or failed fatally ({text}); "
                f"restarted as {self.transactional_id!r}; nothing of its open transaction is "
                "committed",
                refused=blamed,
                fenced=True,
            ) from exc
        raise TransactionAbortedError(
            f"transaction aborted ({text}); nothing of it is committed", refused=blamed
        ) from exc

    def _restart(self, *, new_id: bool = True) -> None:
        """Replace the producer; ``new_id``: under the next incarnation of the id."""
        with contextlib.suppress(KafkaException, RuntimeError):
            self._producer.purge()
            self._producer.flush(0)
        if new_id:
            self._incarnation += 1
        self.watch = ConnectionWatch("transactional producer")
        self._producer = self._start()

    def serve(self) -> None:
        """Serve delivery reports and errors without waiting."""
        self._producer.poll(0)

    def close(self) -> None:
        """Abort an open transaction (nothing is staged in it then) and flush."""
        if self._open:
            try:
                self._producer.abort_transaction(self._timeout)
            except KafkaException as exc:
                logger.warning("aborting the open transaction on close: %s", exc)
            self._open = False
        self._producer.flush(self._timeout)


def _size(record: StagedRecord) -> int:
    """About what ``record`` takes in a batch (payload, key, headers, framing)."""
    size = 70 + len(record.value or b"") + len(record.key or b"")
    for name, value in record.headers:
        size += len(name) + len(value or b"") + 2
    return size


def _culprit(
    refused: dict[tuple[str, int, int], tuple[int, str]],
) -> Callable[[], dict[tuple[str, int, int], str]]:
    """The input to blame, read once the delivery reports are in: the largest refused record.

    The broker refuses a whole batch for one record too large, so every message in it gets
    the report; blaming the largest makes each abort fail one message, and the rest pass.
    """

    def blamed() -> dict[tuple[str, int, int], str]:
        if not refused:
            return {}
        # a missing topic (size 0) is the fault of every record for it
        culprits = {where: why for where, (size, why) in refused.items() if size == 0}
        where, (_, why) = max(refused.items(), key=lambda item: item[1][0])
        culprits[where] = why
        return culprits

    return blamed
