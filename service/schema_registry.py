"""SchemaRegistry: the few registry calls the service makes, with errors translated.

Any Confluent-compatible registry works (Confluent Schema Registry, Apicurio's
``/apis/ccompat/v7``, Karapace). Failures are raised as
:class:`~service.errors.SchemaRegistryUnavailableError` when the registry cannot be reached
or answers 5xx (it may pass), as :class:`~service.errors.UnknownSchemaError` for an unknown
schema id, and as :class:`~service.errors.SchemaRegistryError` otherwise (with the
registry's HTTP status and error code in the text).

No text of this module shows a secret: the URL is shown with its user-info masked
(:func:`~service.redaction.mask_url`, also :attr:`SchemaRegistry.url`), and the password and
TLS key passwords are masked in the errors of the libraries underneath.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, TypeVar
from urllib.parse import urlsplit

from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError as ClientError

from service.errors import (
    ConfigurationError,
    SchemaRegistryError,
    SchemaRegistryUnavailableError,
    UnknownSchemaError,
)
from service.redaction import is_secret_key, mask_text, mask_url, reveal

if TYPE_CHECKING:
    from service.config.model import RegistryConfig

__all__ = ["RegisteredSchema", "SchemaRegistry"]

T = TypeVar("T")
_NOT_FOUND = 404


class RegisteredSchema:
    """A schema as registered under a subject."""

    __slots__ = ("schema_id", "text", "version")

    def __init__(self, schema_id: int, version: int, text: str) -> None:
        self.schema_id = schema_id
        self.version = version
        self.text = text


class SchemaRegistry:
    """A client of a Confluent-compatible schema registry.

    Args:
        url: the registry's base URL (for Apicurio: ``http://host:8080/apis/ccompat/v7``).
        basic_auth: ``(user, password)``, if the registry requires it.
        ssl: ``ssl.ca.location``, ``ssl.certificate.location``, ``ssl.key.location``,
            ``ssl.key.password`` as confluent-kafka's ``SchemaRegistryClient`` takes them.
        timeout: seconds per HTTP request.
    """

    def __init__(
        self,
        url: str,
        *,
        basic_auth: tuple[str, str] | None = None,
        ssl: Mapping[str, str] | None = None,
        timeout: float = 10.0,
    ) -> None:
        if not url:
            raise ConfigurationError("the schema registry URL is empty")
        config: dict[str, Any] = {"url": url, "timeout": timeout, "max.retries": 1, **(ssl or {})}
        if basic_auth is not None:
            config["basic.auth.user.info"] = f"{basic_auth[0]}:{basic_auth[1]}"
        self.url = mask_url(url)
        self._secrets = [
            basic_auth[1] if basic_auth else None,
            urlsplit(url).password,
            *(value for key, value in (ssl or {}).items() if is_secret_key(key)),
        ]
        try:
            self._client = SchemaRegistryClient(config)
        except (ValueError, TypeError) as exc:  # the client checks its settings on creation
            raise ConfigurationError(
                f"schema registry {self.url}: {self._masked(str(exc))}"
            ) from exc

    @classmethod
    def from_config(cls, registry: RegistryConfig) -> SchemaRegistry:
        """The client of the registry configured as ``registry`` (URL, basic auth, TLS)."""
        auth = None
        if registry.username:
            auth = (registry.username, registry.password.reveal() if registry.password else "")
        return cls(registry.url, basic_auth=auth, ssl=reveal(registry.ssl))

    def _masked(self, text: str) -> str:
        return mask_text(text, self._secrets)

    def _call(self, what: str, call: Callable[[], T]) -> T:
        try:
            return call()
        except ClientError as exc:
            text = self._masked(
                f"schema registry {self.url}: {what}: HTTP {exc.http_status_code}, "
                f"error {exc.error_code}: {exc.error_message}"
            )
            if exc.http_status_code >= 500 or exc.http_status_code < 0:
                raise SchemaRegistryUnavailableError(text) from exc
            raise SchemaRegistryError(text) from exc
        except Exception as exc:  # the HTTP library's errors all mean: unreachable
            raise SchemaRegistryUnavailableError(
                f"schema registry {self.url}: {what}: cannot reach it: "
                f"{type(exc).__name__}: {self._masked(str(exc))}"
            ) from exc

    def register(self, subject: str, schema_text: str) -> int:
        """Register ``schema_text`` under ``subject`` (idempotent); returns the schema id."""
        return self._call(
            f"registering {subject!r}",
            lambda: self._client.register_schema(subject, Schema(schema_text, "AVRO")),
        )

    def lookup(self, subject: str, schema_text: str) -> RegisteredSchema | None:
        """The registration of ``schema_text`` under ``subject``, or ``None``."""
        return self._registered(
            f"looking up a schema of {subject!r}",
            lambda: self._client.lookup_schema(subject, Schema(schema_text, "AVRO")),
        )

    def latest(self, subject: str) -> RegisteredSchema | None:
        """The latest version under ``subject``, or ``None`` when the subject is unknown."""
        return self._registered(
            f"reading the latest {subject!r}", lambda: self._client.get_latest_version(subject)
        )

    def _registered(self, what: str, call: Callable[[], Any]) -> RegisteredSchema | None:
        try:
            found = self._call(what, call)
        except SchemaRegistryError as exc:
            if isinstance(exc.__cause__, ClientError) and (
                exc.__cause__.http_status_code == _NOT_FOUND
            ):
                return None
            raise
        return RegisteredSchema(
            found.schema_id or 0, found.version or 0, found.schema.schema_str or ""
        )

    def is_compatible(self, subject: str, schema_text: str) -> bool:
        """Whether ``schema_text`` may be registered under ``subject`` (the registry's rule)."""
        return self._call(
            f"checking compatibility with {subject!r}",
            lambda: self._client.test_compatibility(subject, Schema(schema_text, "AVRO")),
        )

    def schema_text(self, schema_id: int) -> str:
        """The schema registered under ``schema_id``.

        Raises:
            UnknownSchemaError: the registry has no such id.
        """
        try:
            schema = self._call(
                f"fetching schema id {schema_id}", lambda: self._client.get_schema(schema_id)
            )
        except SchemaRegistryError as exc:
            if isinstance(exc.__cause__, ClientError) and (
                exc.__cause__.http_status_code == _NOT_FOUND
            ):
                raise UnknownSchemaError(
                    f"the schema registry has no schema id {schema_id}"
                ) from exc
            raise
        return schema.schema_str or ""

    def ping(self) -> None:
        """Ask the registry for its subjects: raises if it cannot answer."""
        self._call("listing subjects", self._client.get_subjects)

    def close(self) -> None:
        """Close the HTTP connections."""
        self._client.close()

    def __enter__(self) -> Self:
        """Use as a context manager that closes on exit."""
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the client."""
        self.close()
