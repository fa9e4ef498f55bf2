"""Consumers: the application code the dispatcher hands decoded messages to.

Two ways to write one, as in Melange:

* subclass :class:`Consumer` and implement ``process`` (and optionally ``accepts``), or pass
  ``on_message`` to its constructor;
* subclass :class:`SingleDispatchConsumer` and decorate one method per message class with
  :func:`consumer`; the class of the first parameter's annotation selects the method.

``accepts`` receives the message's **manifest** (its type name, a string) and is asked before
the payload is decoded, so a message no consumer wants is never deserialized.

Handlers may be ``async def``: the dispatcher awaits whatever a handler returns that is
awaitable, on its own event loop, before the message counts as handled. A handler that wants
the record behind the message (key, headers, topic, partition, offset, timestamp, message id,
attempt) reads ``record=`` in ``process``, or, for an ``@consumer`` method, declares a second
parameter annotated :class:`~service.messages.Record`.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from typing import Any, TypeVar

from service.errors import ConfigurationError
from service.messages import Record

__all__ = ["Consumer", "SingleDispatchConsumer", "consumer", "fully_qualified_name", "manifest_of"]

_HANDLER_MARK = "__service_consumer_handler__"
F = TypeVar("F", bound=Callable[..., Any])


def manifest_of(cls: type) -> str:
    """The manifest of a message class: ``cls.__manifest__`` when set, else its ``__name__``."""
    manifest = getattr(cls, "__manifest__", None)
    return manifest if isinstance(manifest, str) else cls.__name__


def fully_qualified_name(obj: object) -> str:
    """``module.QualifiedClassName`` of ``obj``'s class, the default consumer name."""
    cls = type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


class Consumer:
    """Receives decoded messages from a dispatcher.

    Either override :meth:`process` or pass ``on_message``; the default :meth:`accepts` takes
    every manifest. :attr:`name` is the prefix of this consumer's deduplication keys, so two
    consumers attached to one dispatcher must not share a name.

    Args:
        on_message: called with the decoded message when :meth:`process` is not overridden.

    Raises:
        ConfigurationError: neither ``process`` is overridden nor ``on_message`` given.
    """

    def __init__(self, on_message: Callable[[Any], Any] | None = None) -> None:
        if on_message is None and type(self).process is Consumer.process:
            raise ConfigurationError(
                f"{type(self).__qualname__} has no process() override and no on_message "
                "callback: give it one or the other"
            )
        self._on_message = on_message

    @property
    def name(self) -> str:
        """This consumer's name in deduplication keys, logs and metrics."""
        return fully_qualified_name(self)

    def process(self, message: Any, **kwargs: Any) -> Any:
        """Handle one decoded message; raising means it failed and will be retried.

        May be ``async def`` (or return an awaitable): the dispatcher awaits it.

        Args:
            message: the decoded message object.
            **kwargs: ``message_id`` (str), the message's id; ``record``
                (:class:`~service.messages.Record`), the record behind it.
        """
        if self._on_message is None:  # only reachable if a subclass deletes the guard
            raise ConfigurationError(f"{self.name} has no on_message callback")
        return self._on_message(message)

    def accepts(self, manifest: str) -> bool:
        """Whether this consumer wants messages of type ``manifest``; all by default."""
        return True


def consumer(method: F) -> F:
    """Mark a :class:`SingleDispatchConsumer` method as the handler of its first parameter's type.

    The method takes ``self``, one message parameter whose annotation is a class, and
    optionally a second parameter annotated :class:`~service.messages.Record`. It may be
    ``async def``.
    """
    setattr(method, _HANDLER_MARK, True)
    return method


class SingleDispatchConsumer(Consumer):
    """A consumer with one ``@consumer`` method per message class.

    :meth:`process` calls the handler registered for the message's class, resolving
    subclasses along the MRO; :meth:`accepts` is true exactly for the manifests of the
    registered classes (see :func:`manifest_of`). Handlers are inherited and may be
    overridden by name in subclasses.

    Raises:
        ConfigurationError: at class creation, when a handler's first parameter has no
            class annotation, or two handlers claim the same class.
    """

    _handlers: dict[type, str]
    _manifests: frozenset[str]
    _with_record: frozenset[str]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        handlers: dict[type, str] = {}
        with_record: set[str] = set()
        for klass in reversed(cls.__mro__):
            for attr, value in vars(klass).items():
                if getattr(value, _HANDLER_MARK, False):
                    message_type, wants_record = _handled_type(klass, attr, value)
                    if wants_record:
                        with_record.add(attr)
                    else:
                        with_record.discard(attr)
                    owner = handlers.get(message_type)
                    if owner is not None and owner != attr and klass is cls:
                        raise ConfigurationError(
                            f"{cls.__qualname__}: handlers {owner!r} and {attr!r} both "
                            f"consume {message_type.__qualname__}"
                        )
                    handlers = {t: a for t, a in handlers.items() if a != attr}
                    handlers[message_type] = attr
        cls._handlers = handlers
        cls._manifests = frozenset(manifest_of(t) for t in handlers)
        cls._with_record = frozenset(with_record)

    def __init__(self) -> None:
        super().__init__()
        self._resolved: dict[type, tuple[Callable[..., Any], bool] | None] = {}

    @property
    def handled_types(self) -> tuple[type, ...]:
        """The message classes this consumer has handlers for."""
        return tuple(self._handlers)

    def accepts(self, manifest: str) -> bool:
        """True exactly for the manifests of the classes with a handler."""
        return manifest in self._manifests

    def process(self, message: Any, **kwargs: Any) -> Any:
        """Call the handler registered for ``type(message)`` or its nearest base class.

        Returns what the handler returns (the dispatcher awaits an awaitable).

        Raises:
            ConfigurationError: no handler matches the message's class.
        """
        cls = type(message)
        try:
            handler = self._resolved[cls]
        except KeyError:
            handler = self._resolve(cls)
            self._resolved[cls] = handler
        if handler is None:
            raise ConfigurationError(f"{self.name} has no @consumer handler for {cls.__qualname__}")
        method, wants_record = handler
        if wants_record:
            return method(message, kwargs.get("record"))
        return method(message)

    def _resolve(self, cls: type) -> tuple[Callable[..., Any], bool] | None:
        for klass in cls.__mro__:
            attr = self._handlers.get(klass)
            if attr is not None:
                return getattr(self, attr), attr in self._with_record
        return None


def _handled_type(owner: type, attr: str, function: Callable[..., Any]) -> tuple[type, bool]:
    """The message class a handler takes, and whether it takes the record too."""
    params = list(inspect.signature(function).parameters.values())
    where = f"{owner.__qualname__}.{attr}"
    if len(params) not in (2, 3):
        raise ConfigurationError(
            f"@consumer {where} must take (self, message) or (self, message, record: Record); "
            f"it takes {len(params)} parameters"
        )
    try:
        hints = typing.get_type_hints(function)
    except NameError as exc:
        raise ConfigurationError(f"@consumer {where}: cannot resolve annotation: {exc}") from exc
    annotation = hints.get(params[1].name)
    if not isinstance(annotation, type):
        raise ConfigurationError(
            f"@consumer {where}: parameter {params[1].name!r} must be annotated with a class, "
            f"got {annotation!r}"
        )
    if len(params) == 3 and hints.get(params[2].name) is not Record:
        raise ConfigurationError(
            f"@consumer {where}: a second parameter must be annotated Record (from service), "
            f"got {hints.get(params[2].name)!r}"
        )
    return annotation, len(params) == 3
