"""Translation of confluent-kafka errors into the service's exception tree."""

from __future__ import annotations

from confluent_kafka import KafkaError, KafkaException

from service.errors import (
    AuthenticationError,
    AuthorizationError,
    BackendError,
    BrokerUnavailableError,
    ProduceError,
)

__all__ = ["PERMANENT_PRODUCE_CODES", "TRANSIENT_CODES", "produce_error", "translate"]

TRANSIENT_CODES = frozenset(
    {
        KafkaError._TRANSPORT,
        KafkaError._ALL_BROKERS_DOWN,
        KafkaError._TIMED_OUT,
        KafkaError._RESOLVE,
        KafkaError.NETWORK_EXCEPTION,
        KafkaError.REQUEST_TIMED_OUT,
        KafkaError.NOT_COORDINATOR,
        KafkaError.COORDINATOR_NOT_AVAILABLE,
        KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.NOT_LEADER_FOR_PARTITION,
    }
)
_AUTHENTICATION_CODES = frozenset(
    {KafkaError._AUTHENTICATION, KafkaError.SASL_AUTHENTICATION_FAILED}
)
_AUTHORIZATION_CODES = frozenset(
    {
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.GROUP_AUTHORIZATION_FAILED,
        KafkaError.CLUSTER_AUTHORIZATION_FAILED,
        KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
    }
)


PERMANENT_PRODUCE_CODES = frozenset(
    {
        KafkaError.MSG_SIZE_TOO_LARGE,
        KafkaError.RECORD_LIST_TOO_LARGE,
        KafkaError.INVALID_RECORD,
        KafkaError.INVALID_MSG,
        KafkaError.INVALID_MSG_SIZE,
        KafkaError.TOPIC_EXCEPTION,
        KafkaError.POLICY_VIOLATION,
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.CLUSTER_AUTHORIZATION_FAILED,
        KafkaError._INVALID_ARG,
    }
)
"""Produce errors where sending the same record again cannot help."""


def produce_error(error: KafkaError | KafkaException, context: str) -> ProduceError:
    """The :class:`ProduceError` for a refused record, ``permanent`` when retrying is futile."""
    kafka_error = error.args[0] if isinstance(error, KafkaException) else error
    if not isinstance(kafka_error, KafkaError):
        return ProduceError(f"{context}: {error}")
    permanent = kafka_error.code() in PERMANENT_PRODUCE_CODES
    return ProduceError(
        f"{context}: {kafka_error.name()}: {kafka_error.str()}", permanent=permanent
    )


def translate(error: KafkaError | KafkaException, context: str) -> BackendError:
    """The service error for a confluent-kafka error met while doing ``context``.

    The text keeps librdkafka's error name and reason; the caller raises it ``from`` the
    original so the code stays reachable as ``__cause__``.
    """
    kafka_error = error.args[0] if isinstance(error, KafkaException) else error
    if not isinstance(kafka_error, KafkaError):
        return BackendError(f"{context}: {error}")
    code = kafka_error.code()
    text = f"{context}: {kafka_error.name()}: {kafka_error.str()}"
    if code in _AUTHENTICATION_CODES:
        return AuthenticationError(f"{text} (check sasl.username / sasl.password)")
    if code in _AUTHORIZATION_CODES:
        return AuthorizationError(f"{text} (the principal lacks an ACL for this)")
    if code in TRANSIENT_CODES:
        return BrokerUnavailableError(text)
    return BackendError(text)
