from __future__ import annotations

from dataclasses import dataclass

import pytest

from service import ConfigurationError, Consumer, SingleDispatchConsumer, consumer, manifest_of
from tests.payments import DoPayment, ExpressPayment, OrderResponse, PaymentConsumer, PaymentService


@dataclass
class Unhandled:
    x: int


def test_manifest_is_dunder_manifest_else_class_name() -> None:
    assert manifest_of(DoPayment) == "DoPayment"
    assert manifest_of(ExpressPayment) == "payments.ExpressPayment"


def test_consumer_with_on_message_callback_receives_messages() -> None:
    seen: list[object] = []
    c = Consumer(on_message=seen.append)
    c.process({"a": 1}, message_id="m1")
    assert seen == [{"a": 1}]
    assert c.accepts("anything")


def test_consumer_without_process_or_callback_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="no process"):
        Consumer()


def test_consumer_name_is_fully_qualified_class_name() -> None:
    assert PaymentConsumer(PaymentService()).name == "tests.payments.PaymentConsumer"


def test_single_dispatch_accepts_exactly_registered_manifests() -> None:
    c = PaymentConsumer(PaymentService())
    assert c.accepts("OrderResponse")
    assert c.accepts("DoPayment")
    assert not c.accepts("payments.ExpressPayment")  # registered types only, not subclasses
    assert not c.accepts("Unhandled")
    assert set(c.handled_types) == {OrderResponse, DoPayment}


def test_single_dispatch_routes_by_type_and_subclass_by_mro() -> None:
    service = PaymentService()
    c = PaymentConsumer(service)
    c.process(OrderResponse("o1", 5))
    c.process(DoPayment("o2", 6))
    c.process(ExpressPayment("o3", 7))
    assert service.processed == [OrderResponse("o1", 5)]
    assert service.payments == [DoPayment("o2", 6), ExpressPayment("o3", 7)]


def test_single_dispatch_unhandled_type_is_an_error() -> None:
    with pytest.raises(ConfigurationError, match="no @consumer handler for Unhandled"):
        PaymentConsumer(PaymentService()).process(Unhandled(1))


def test_handler_overridden_in_subclass_wins() -> None:
    calls: list[str] = []

    class Base(SingleDispatchConsumer):
        @consumer
        def on_pay(self, command: DoPayment) -> None:
            calls.append("base")

    class Child(Base):
        @consumer
        def on_pay(self, command: DoPayment) -> None:
            calls.append("child")

    Child().process(DoPayment("o", 1))
    assert calls == ["child"]


def test_handler_without_class_annotation_is_rejected_at_class_creation() -> None:
    with pytest.raises(ConfigurationError, match="must be annotated with a class"):

        class Bad(SingleDispatchConsumer):
            @consumer
            def on_any(self, message) -> None:  # type: ignore[no-untyped-def]
                pass


def test_two_handlers_for_one_type_are_rejected() -> None:
    with pytest.raises(ConfigurationError, match="both consume DoPayment"):

        class Bad(SingleDispatchConsumer):
            @consumer
            def one(self, command: DoPayment) -> None:
                pass

            @consumer
            def two(self, command: DoPayment) -> None:
                pass
