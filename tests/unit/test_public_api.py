from __future__ import annotations

import inspect

import service
from service import errors


def test_all_is_sorted_and_complete() -> None:
    assert service.__all__ == sorted(service.__all__)
    for name in service.__all__:
        assert hasattr(service, name), name
    required = {
        "Consumer",
        "SingleDispatchConsumer",
        "consumer",
        "MessageDispatcher",
        "SimpleMessageDispatcher",
        "Message",
        "Serializer",
        "SerializerRegistry",
        "JsonSerializer",
        "MessagingBackend",
        "InMemoryBackend",
        "Publisher",
        "DeduplicationCache",
        "NullCache",
        "InMemoryCache",
        "DeadLetterLimit",  # MessageDispatcher(dead_letter_limit=...) takes one
    }
    assert required <= set(service.__all__)


def test_every_error_class_is_exported_and_rooted_in_service_error() -> None:
    classes = {
        name
        for name, obj in vars(errors).items()
        if inspect.isclass(obj) and issubclass(obj, Exception)
    }
    assert classes == set(errors.__all__)
    assert classes <= set(service.__all__)
    assert all(issubclass(getattr(errors, n), errors.ServiceError) for n in classes)


def test_no_pickle_serializer_is_shipped() -> None:
    import service.serializers as serializers

    assert not any("pickle" in name.lower() for name in dir(serializers))
