"""Translation of confluent-kafka errors into the service's exception tree."""

from __future__ import annotations

from confluent_kafka import KafkaError, KafkaException

from service.errors import (
    AuthenticationError,
    AuthorizationError,
    BackendError,
    BrokerUnavailableError,
)

__all__ = ["TRANSIENT_CODES", "translate"]

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
