"""Messaging backends: the contract and its implementations."""

from service.backends.base import (
    DeadLetterReason,
    MessagingBackend,
    Subscription,
    default_dead_letter_topic,
)
from service.backends.memory import DeadLetter, InMemoryBackend

__all__ = [
    "DeadLetter",
    "DeadLetterReason",
    "InMemoryBackend",
    "MessagingBackend",
    "Subscription",
    "default_dead_letter_topic",
]
