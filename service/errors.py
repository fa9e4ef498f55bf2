"""The exception tree of the service: every error it raises derives from ``ServiceError``.

::

    ServiceError
    ├── ConfigurationError            bad settings or wiring; fix the configuration
    ├── MessageError                  one message cannot be handled (carries its location)
    │   ├── MissingHeaderError        a routing header (serializer_id, manifest, ...) is absent
    │   ├── MalformedHeaderError      a routing header is present but unreadable
    │   └── SerializationError        payload <-> object conversion failed
    │       ├── UnknownSerializerError   no serializer registered under the message's id
    │       ├── UnknownManifestError     the serializer knows no type for the manifest
    │       ├── UnknownSchemaError       the registry has no schema under the message's schema id
    │       └── DeserializationError     the bytes do not decode
    ├── ConsumerError                 a consumer raised while processing (original in __cause__)
    ├── TransientError                raise it from a consumer: "may pass, retry, never dead-letter"
    ├── BackendError                  the messaging backend failed
    │   ├── BrokerUnavailableError    the broker cannot be reached (transient)
    │   ├── AuthenticationError       the broker refused the credentials
    │   ├── AuthorizationError        the principal lacks an ACL for the operation
    │   ├── CommitError               an offset commit failed, or a commit gate refused
    │   │   └── TransactionAbortedError  a transaction was aborted (exactly-once): rewound
    │   └── ProduceError              a record could not be published
    │       └── DeadLetterRefusedError   the dead-letter topic refuses a record for good
    ├── SchemaRegistryError           the schema registry failed or refused
    │   └── SchemaRegistryUnavailableError  it cannot be reached (transient: retried)
    ├── DeduplicationStoreError       the deduplication store failed
    └── MessageRejected               control flow: an executor is full (never escapes the loop)

``MessageError`` subclasses are *permanent*: retrying the same bytes cannot help, so the
dispatcher dead-letters such a message at once. A ``ConsumerError`` is retried with backoff
and dead-lettered when the retry policy's attempts are spent, unless its cause *may pass*
(a ``TransientError``, ``ConnectionError`` or ``TimeoutError`` raised by the consumer), and
so are infrastructure errors (``BackendError``, ``DeduplicationStoreError``,
``SchemaRegistryError`` while decoding): those are
retried with backoff for as long as they last, never dead-lettered. Errors from libraries underneath
(confluent-kafka, fastavro, json) are translated at the boundary with ``raise ... from exc``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable

    from service.messages import Message

__all__ = [
    "AuthenticationError",
    "AuthorizationError",
    "BackendError",
    "BrokerUnavailableError",
    "CommitError",
    "ConfigurationError",
    "ConsumerError",
    "DeadLetterRefusedError",
    "DeduplicationStoreError",
    "DeserializationError",
    "MalformedHeaderError",
    "MessageError",
    "MessageRejected",
    "MissingHeaderError",
    "ProduceError",
    "SchemaRegistryError",
    "SchemaRegistryUnavailableError",
    "SerializationError",
    "ServiceError",
    "TransactionAbortedError",
    "TransientError",
    "UnknownManifestError",
    "UnknownSchemaError",
    "UnknownSerializerError",
]


class ServiceError(Exception):
    """Root of every error raised by the service."""


class ConfigurationError(ServiceError):
    """The service, a queue, a serializer or a consumer is configured or wired wrongly."""


class MessageError(ServiceError):
    """One message cannot be handled; retrying the same bytes cannot help.

    Attributes:
        message: the message concerned, when known; its location is appended to the text.
    """

    def __init__(self, text: str, message: Message | None = None) -> None:
        self.text = text
        self.message = message
        super().__init__(text if message is None else f"{text} ({message.location})")

    def locate(self, message: Message) -> None:
        """Attach ``message`` (and its location in the text) if none is attached yet."""
        if self.message is None:
            self.message = message
            self.args = (f"{self.text} ({message.location})",)


class MissingHeaderError(MessageError):
    """A routing header the dispatcher needs is absent."""


class MalformedHeaderError(MessageError):
    """A routing header is present but cannot be read (not UTF-8, not an integer, duplicated)."""


class SerializationError(MessageError):
    """Converting between an object and its bytes failed."""


class UnknownSerializerError(SerializationError):
    """No serializer is registered under the identifier carried by the message."""


class UnknownManifestError(SerializationError):
    """The serializer knows no message type for the manifest carried by the message."""


class UnknownSchemaError(SerializationError):
    """The schema registry has no schema under the id the payload names."""


class DeserializationError(SerializationError):
    """The payload does not decode with the serializer and manifest it names."""


class ConsumerError(ServiceError):
    """A consumer raised while processing a message; the original error is ``__cause__``.

    Attributes:
        consumer_name: the failing consumer's name (its fully qualified class name by default).
        message: the message it was processing.
    """

    def __init__(self, consumer_name: str, message: Message, cause: BaseException) -> None:
        self.consumer_name = consumer_name
        self.message = message
        super().__init__(
            f"consumer {consumer_name} failed on {message.location}: "
            f"{type(cause).__name__}: {cause}"
        )


class TransientError(ServiceError):
    """Raise from a consumer when the failure may pass (a dependency is unreachable).

    The message is retried with backoff for as long as it takes and never dead-lettered.
    """


class BackendError(ServiceError):
    """The messaging backend failed; the operation may succeed if retried."""


class BrokerUnavailableError(BackendError):
    """The broker cannot be reached (down, wrong address, network)."""


class AuthenticationError(BackendError):
    """The broker refused the client's credentials; retrying will not help."""


class AuthorizationError(BackendError):
    """The principal is not allowed the operation (topic, group or cluster ACL)."""


class CommitError(BackendError):
    """Committing consumed offsets failed."""


class TransactionAbortedError(CommitError):
    """An exactly-once transaction was aborted: nothing of it is committed.

    The subscription rewinds every assigned partition to its committed offset, so what the
    transaction held is processed again; it never escapes the subscription.

    Attributes:
        refused: ``(topic, partition, offset) -> why`` for input messages whose outputs
            the broker refused (their next delivery fails with the reason).
        fenced: the producer was fenced (another producer took its transactional id).
    """

    def __init__(
        self,
        text: str,
        *,
        refused: dict[tuple[str, int, int], str] | None = None,
        fenced: bool = False,
    ) -> None:
        super().__init__(text)
        self.refused = refused or {}
        self.fenced = fenced


class ProduceError(BackendError):
    """Publishing a record failed.

    Attributes:
        permanent: the broker refuses this record for good (too large, invalid, not
            allowed): sending it again cannot help.
    """

    def __init__(self, text: str, *, permanent: bool = False) -> None:
        super().__init__(text)
        self.permanent = permanent


class DeadLetterRefusedError(ProduceError):
    """The dead-letter topic refuses a record for good (size, validation, permission).

    The message could neither be processed nor dead-lettered, even without its payload: the
    loop stops loudly rather than commit past it or retry for ever.
    """


class SchemaRegistryError(ServiceError):
    """The schema registry could not be reached or refused a request."""


class SchemaRegistryUnavailableError(SchemaRegistryError):
    """The schema registry cannot be reached or answered 5xx; it may pass."""


class DeduplicationStoreError(ServiceError):
    """The deduplication store could not be read or written.

    Raised by a commit gate (the dedup store's), it is the reason of the ``CommitError``
    that stops the commit.

    Attributes:
        partitions: the input partition numbers whose offsets it keeps uncommitted; empty
            when it does not concern particular partitions.
    """

    def __init__(self, text: str, partitions: Iterable[int] = ()) -> None:
        super().__init__(text)
        self.partitions = frozenset(partitions)


class MessageRejected(ServiceError):  # noqa: N818 - named after Arroyo's signal, not an error
    """An executor is full and did not take the message; submit it again later.

    Control flow between an executor and the loop (which pauses the partition meanwhile);
    it never reaches users.
    """

    def __init__(self, partition: tuple[str, int]) -> None:
        super().__init__(f"no room for a message of {partition[0]}[{partition[1]}]")
        self.partition = partition
