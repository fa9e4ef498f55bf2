"""ConsumeLoop: the one loop - poll, submit, settle - of one subscription.

Follow a message from poll to commit:

1. :meth:`ConsumeLoop.run` polls the subscription (rebalance callbacks run inside the poll
   and reach :meth:`on_revoked` / :meth:`on_lost` here first, then the checkpoint);
2. each message is submitted to the executor (:mod:`service.dispatch.executors`); one the
   executor has no room for (:class:`~service.errors.MessageRejected`) is held, and its
   partition paused, until there is room;
3. the executor runs the :class:`~service.dispatch.decider.Decider`, which returns a verdict;
4. :meth:`_settle` carries the verdict out on the subscription, on this thread only:
   acknowledge, redeliver (the attempt is counted there, once), or dead-letter; a message
   whose handlers published outputs waits (in flight) until the broker confirmed each, and
   then is acknowledged with its dedup entries written, or fails if an output was refused;
5. the subscription's checkpoint commits, per partition, the offsets below which every
   message is done and every commit gate (dedup entries) is durable.

``early_ack`` is handled here alone: a message is acknowledged when it starts (inline: before
it runs; on lanes: the loop acknowledges what the workers report started, at its next turn,
always before the completion is settled), and of its verdict only a dead letter is still
carried out (at-most-once processing: a crash loses what started and did not finish). Work
queued on a lane and not started is not acknowledged: a stop, a revocation or a halt hands
it back like any other, so only a crash can lose a message. (Acknowledging on submission
lost the queued rest when a stop outlasted ``revoke_timeout``.)

A revocation first drops the queued work of the revoked partitions, then waits (up to
``revoke_timeout``) for their started work and settles it, so that the revocation commit
includes it; work still running after that is abandoned (its result is discarded, the next
owner runs the message again). A lost assignment drops and abandons at once.

With a :class:`~service.dispatch.flood.DeadLetterLimit`, a queue that dead-letters too much
halts: its queued and held work is handed back, its partitions are paused (also those
assigned later), later dead-letter verdicts are not carried out (the messages are handed back
instead; with ``early_ack`` they were acknowledged when they started, so their dead letters are
written), and :attr:`ConsumeLoop.halted` says why; the loop keeps polling so the group sees a
live member, and nothing is committed past what is done.

The loop ends when the dispatcher is asked to stop (messages in hand finish; queued ones,
and the rest of a polled batch, are delivered again later), when a finite backend has
nothing more, or loudly, by raising, on an error it cannot pass: a commit gate failing
(:class:`~service.errors.CommitError`), a dead letter refused for good, the broker refusing
credentials, a worker's unexpected error.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable

from service.backends.base import DeadLetterReason, Subscription, TopicPartition
from service.dispatch.decider import Decider
from service.dispatch.executors import Completion, Executor, InlineExecutor
from service.dispatch.flood import DeadLetterLimit
from service.dispatch.outcomes import (
    ACK,
    SKIP,
    DispatchObserver,
    DispatchOutcome,
    ExceptionCallback,
    report,
)
from service.errors import BackendError, DeadLetterRefusedError, MessageRejected
from service.logs import message_fields
from service.messages import Message

__all__ = ["ConsumeLoop"]

logger = logging.getLogger("service.dispatcher")

_QUICK_POLL = 0.005  # seconds a poll waits while work is in flight
_FULL_GRACE = 0.5  # seconds a full executor is waited on before every partition is paused


class ConsumeLoop:
    """Runs one subscription until told to stop; see the module docstring."""

    def __init__(
        self,
        subscription: Subscription,
        decider: Decider,
        executor: Executor,
        *,
        should_stop: Callable[[], bool],
        early_ack: bool = False,
        poll_batch: int = 1000,
        poll_timeout: float = 0.5,
        revoke_timeout: float = 60.0,
        observer: DispatchObserver | None = None,
        on_exception: ExceptionCallback | None = None,
        after_consume: Callable[[], None] | None = None,
        on_poll: Callable[[], None] | None = None,
        dead_letter_limit: DeadLetterLimit | None = None,
    ) -> None:
        self._subscription = subscription
        self._decider = decider
        self._executor = executor
        self._should_stop = should_stop
        self._early_ack = early_ack
        self._poll_batch = poll_batch
        self._poll_timeout = poll_timeout
        self._revoke_timeout = revoke_timeout
        self._observer = observer
        self._on_exception = on_exception
        self._after_consume = after_consume
        self._on_poll = on_poll
        self._held: dict[TopicPartition, deque[Message]] = defaultdict(deque)
        self._inline = isinstance(executor, InlineExecutor)
        self._limit = dead_letter_limit
        self._assigned: set[TopicPartition] = set()
        self._parked: list[Completion] = []  # acknowledged by handlers, outputs unconfirmed
        self._full = False  # every partition paused because the executor has no room
        self._full_since: float | None = None  # when the executor last ran out of room

    @property
    def halted(self) -> str | None:
        """Why the loop stopped taking messages (its dead-letter limit tripped), or None."""
        return None if self._limit is None else self._limit.tripped

    def run(self) -> None:
        """Poll, submit and settle until stopped (see the module docstring).

        The loop must be the subscription's first listener (it settles started work before
        the revocation commit); whoever creates it adds it.
        """
        subscription, executor = self._subscription, self._executor
        try:
            while not self._should_stop():
                failure = executor.failure()
                if failure is not None:
                    raise failure
                self._settle_completed(0.0)
                if self._parked:
                    self._settle_parked()
                if self._held:
                    self._submit_held()
                room = self._poll_batch
                if not self._inline:
                    room = min(room, self._room())
                    if room <= 0:  # full: wait for room, then pause everything and poll
                        self._while_full()
                        continue
                    self._full_since = None
                    if self._full:
                        self._unfull()
                busy = executor.in_flight or self._held or self._parked
                batch = subscription.poll(room, _QUICK_POLL if busy else self._poll_timeout)
                if self._on_poll is not None:
                    self._on_poll()
                if batch is None:  # a finite backend has nothing more now
                    if not busy:
                        return
                    self._settle_completed(0.05)
                    continue
                self._take(batch)
        finally:
            executor.close()
            self._settle_completed(0.0)

    def _while_full(self) -> None:
        """The executor has no room: wait for some, then pause every partition and poll.

        For up to ``_FULL_GRACE`` seconds the loop only settles what completes, without
        polling: librdkafka keeps its prefetch, whereas a pause discards it and resumed
        partitions deliver again only after ~1 s (librdkafka 2.16; with 10 ms handlers and
        320 in flight, pausing at once capped 32 workers near 320 msg/s). Still full after
        that, it pauses every partition and polls all the same: polling keeps the member in
        its group (``max.poll.interval.ms``) and carries out what is due (rebalances,
        redeliveries, commits); what a poll still returns is held in order.
        """
        now = time.monotonic()
        if self._full_since is None:
            self._full_since = now
        if not self._full and now - self._full_since < _FULL_GRACE:
            self._settle_completed(0.05)
            return
        subscription = self._subscription
        if not self._full:
            self._full = True
            subscription.pause(sorted(self._assigned))
        batch = subscription.poll(self._poll_batch, _QUICK_POLL)
        if self._on_poll is not None:
            self._on_poll()
        if batch is not None:
            self._take(batch)
        self._settle_completed(0.05)

    def _unfull(self) -> None:
        self._full = False
        if self.halted is None:
            self._subscription.resume([tp for tp in self._assigned if tp not in self._held])

    def _room(self) -> int:
        executor = self._executor
        if executor.bytes_full:
            return 0
        return executor.capacity - executor.in_flight - sum(len(q) for q in self._held.values())

    def _take(self, batch: Iterable[Message]) -> None:
        if self._inline and not self._early_ack and not self._held:
            self._take_inline(batch)
            return
        count = 0
        submit, settle, held = self._executor.submit, self._settle, self._held
        early_ack, subscription = self._early_ack, self._subscription
        limit, stopping = self._limit, self._should_stop
        for message in batch:
            count += 1
            # halted (read per message: a settle may trip the limit) or stopping: the rest of
            # the batch is delivered again
            if (limit is not None and limit.tripped) or stopping():
                subscription.release(message)
                continue
            tp = (message.topic, message.partition)
            if tp in held:
                held[tp].append(message)  # behind the held ones, in order
                continue
            if early_ack and self._inline:
                subscription.acknowledge(message)
            try:
                completion = submit(message)
            except MessageRejected:
                held[tp].append(message)
                subscription.pause([tp])
                continue
            if completion is not None:
                settle(completion)
        self._decider.cache.poll()
        if self._observer is not None:
            self._observer.polled(count)

    def _take_inline(self, batch: Iterable[Message]) -> None:
        """:meth:`_take` on the polling thread: each message decided and settled at once.

        The same steps as ``submit`` then :meth:`_settle`, with the common verdicts
        (acknowledged, skipped: no outputs) settled here without the detour.
        """
        executor = self._executor
        assert isinstance(executor, InlineExecutor)  # noqa: S101 - self._inline says so
        decide, settle, subscription = executor.decide, self._settle, self._subscription
        acknowledge, release = subscription.acknowledge, subscription.release
        observer, limit, after = self._observer, self._limit, self._after_consume
        clock = time.perf_counter
        count = 0
        halted, stopping = self.halted is not None, self._should_stop
        for message in batch:
            count += 1
            if halted or stopping():  # stopping: the rest of the batch is delivered again
                release(message)
                continue
            started = clock() if observer is not None else 0.0
            verdict = decide(message)
            if verdict is not ACK and verdict is not SKIP:
                settle(Completion(message, verdict, clock() - started if started else 0.0))
                halted = self.halted is not None
                continue
            acknowledge(message)
            if observer is not None:
                observer.message_outcome(message, verdict.outcome, clock() - started)
            if limit is not None and limit.record(False):
                self._halt(limit.tripped or "")
                halted = True
            if after is not None:
                after()
        self._decider.cache.poll()
        if observer is not None:
            observer.polled(count)

    def _submit_held(self) -> None:
        submit, settle = self._executor.submit, self._settle
        for tp in list(self._held):
            queue = self._held[tp]
            while queue:
                try:
                    completion = submit(queue[0])
                except MessageRejected:
                    break
                queue.popleft()
                if completion is not None:
                    settle(completion)
            if not queue:
                del self._held[tp]
                self._subscription.resume([tp])

    def _settle_completed(self, wait: float) -> None:
        if self._early_ack:  # before their completions: a started message is acknowledged
            for message in self._executor.started():
                self._subscription.acknowledge(message)
        for completion in self._executor.completed(wait):
            self._settle(completion)

    def _settle(self, completion: Completion) -> None:
        """Carry out one verdict on the subscription (this thread only)."""
        message, verdict = completion.message, completion.verdict
        outputs = verdict.outputs
        subscription = self._subscription
        if outputs is not None:
            if not outputs.done:
                self._parked.append(completion)  # settled once the broker answered for each
                return
            if outputs.staged:
                refused = subscription.refusal(message)  # by a transaction aborted before
                if refused is not None:
                    outputs.failures.append(f"{outputs.consumer}: {refused}")
            verdict = self._decider.outputs_settled(message, outputs)
        outcome = verdict.outcome
        limit = self._limit
        if outcome is DispatchOutcome.ACKNOWLEDGED or outcome is DispatchOutcome.SKIPPED:
            if not self._early_ack:
                staged = outputs.staged if outputs is not None else None
                subscription.acknowledge(message, staged or ())
            if outputs is not None:
                self._executor.resolve(message, False)  # its lane waited for the outputs
        elif (
            outcome is DispatchOutcome.DEAD_LETTERED
            and limit is not None
            and limit.tripped
            and not self._early_ack  # acknowledged when it started: it cannot come again
        ):
            subscription.release(message)  # halted: not carried out; delivered after a restart
            for behind in self._executor.resolve(message, True):
                subscription.release(behind)
            outcome = DispatchOutcome.RETRIED
        else:
            if outcome is DispatchOutcome.DEAD_LETTERED:
                assert verdict.reason is not None  # noqa: S101 - a dead-letter verdict has one
                outcome = self._dead_letter(message, verdict.reason)
            elif not self._early_ack:
                subscription.redeliver(message, verdict.delay)
            redelivered = outcome is DispatchOutcome.RETRIED and not self._early_ack
            for behind in self._executor.resolve(message, redelivered):
                subscription.release(behind)
            if redelivered:
                self._release_held_behind(message)
        if self._observer is not None:
            self._observer.message_outcome(message, outcome, completion.seconds)
        if limit is not None and limit.record(outcome is DispatchOutcome.DEAD_LETTERED):
            self._halt(limit.tripped or "")
        if self._full and self._room() > 0:
            self._unfull()  # at once: no partition stays paused with nothing in hand
        if self._after_consume is not None:
            self._after_consume()

    def _release_held_behind(self, message: Message) -> None:
        """Hand back the held (not submitted) messages of its partition after ``message``.

        They come again behind its redelivery, in order.
        """
        tp = (message.topic, message.partition)
        queue = self._held.get(tp)
        if not queue:
            return
        kept = deque(m for m in queue if m.offset < message.offset)
        for later in queue:
            if later.offset > message.offset:
                self._subscription.release(later)
        if kept:
            self._held[tp] = kept
        else:
            del self._held[tp]
            self._subscription.resume([tp])

    def _settle_parked(self) -> None:
        parked, self._parked = self._parked, []
        for completion in parked:
            outputs = completion.verdict.outputs
            if outputs is not None and not outputs.done:
                outputs.serve()
            self._settle(completion)  # parks again what is still unconfirmed

    def _halt(self, reason: str) -> None:
        """Stop taking messages: hand back queued and held work, pause every partition.

        With ``early_ack`` started work was acknowledged: its dead letters are written.
        """
        logger.error("queue halted: %s", reason)
        subscription, owned = self._subscription, sorted(self._assigned)
        for message in self._executor.drop(owned):
            subscription.release(message)
        for queue in self._held.values():
            for message in queue:
                subscription.release(message)
        self._held.clear()
        subscription.pause(owned)

    def _dead_letter(self, message: Message, reason: DeadLetterReason) -> DispatchOutcome:
        fields = {
            **message_fields(message),
            "message_id": self._decider.routing.message_id_of(message),
            "queue": self._decider.queue,
            "consumer": ",".join(reason.failing_consumers),
        }
        logger.error("dead-lettering %s: %s", message.location, reason.text, extra=fields)
        try:
            self._subscription.dead_letter(message, reason)
        except DeadLetterRefusedError:
            raise  # neither processed nor dead-lettered, even without its payload: stop loudly
        except BackendError as exc:  # may pass: try again later
            report(self._on_exception, exc)
            if not self._early_ack:
                self._subscription.redeliver(message, self._decider.retry.delay(message.attempt))
            return DispatchOutcome.RETRIED
        self._decider.forget(message)
        return DispatchOutcome.DEAD_LETTERED

    # -- rebalances (inside poll, on this thread; before the checkpoint acts) --------------
    def on_assigned(self, partitions: list[TopicPartition]) -> None:
        """Note the partitions (the checkpoint starts them afresh); halted: pause them."""
        self._assigned.update(partitions)
        if self.halted is not None:
            self._subscription.pause(partitions)

    def on_revoked(self, partitions: list[TopicPartition]) -> None:
        """Drop queued work of ``partitions``; settle their started work, within a limit."""
        executor = self._executor
        self._drop(partitions)
        deadline = time.monotonic() + self._revoke_timeout
        while (
            executor.running(partitions) or self._parked_of(partitions)
        ) and time.monotonic() < deadline:
            self._settle_completed(0.05)
            self._subscription.serve_outputs()
            self._settle_parked()
        self._settle_completed(0.0)
        self._settle_parked()
        left = executor.running(partitions) + self._parked_of(partitions)
        if left:
            logger.error(
                "%d message(s) of revoked partitions still running after %.0fs; their results "
                "are discarded and the next owner runs them again",
                left,
                self._revoke_timeout,
            )
            executor.abandon(partitions)
            self._forget_parked(partitions)

    def on_lost(self, partitions: list[TopicPartition]) -> None:
        """Drop and abandon all work of ``partitions``: nothing of them is settled."""
        self._drop(partitions)
        self._executor.abandon(partitions)
        self._forget_parked(partitions)

    def _parked_of(self, partitions: list[TopicPartition]) -> int:
        gone = set(partitions)
        return sum((c.message.topic, c.message.partition) in gone for c in self._parked)

    def _forget_parked(self, partitions: list[TopicPartition]) -> None:
        gone = set(partitions)
        kept = []
        for completion in self._parked:
            if (completion.message.topic, completion.message.partition) in gone:
                self._executor.resolve(completion.message, False)  # unblock its lane
            else:
                kept.append(completion)
        self._parked = kept

    def _drop(self, partitions: list[TopicPartition]) -> None:
        self._assigned.difference_update(partitions)
        self._executor.drop(partitions)
        for tp in partitions:
            self._held.pop(tp, None)
