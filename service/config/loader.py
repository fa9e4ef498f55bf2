"""Loading and validating the YAML configuration; every problem reported at once.

Loading runs in four steps, and the problems of all of them are reported together, one
line each, with the path of the value concerned::

    service.yaml: 3 problems:
      kafka.consumer.session.timeout.mss: librdkafka refuses it: No such configuration ...
      queues.payments.concurrency: expected an integer >= 1, got 0
      queues.payments.consumers[1]: cannot import 'examples.payment_service:Nope': ...

1. **References**: a value ``${env:NAME}`` or ``${file:/path}`` is replaced by the variable or
   the file's content (stripped). Values under keys that hold secrets (``*password*``,
   ``*secret*``, ``ssl.key.pem``...) become :class:`~service.redaction.Secret`.
2. **Environment overrides**: ``KAFKA_BOOTSTRAP_SERVERS``, ``KAFKA_SASL_USERNAME``,
   ``KAFKA_SASL_PASSWORD`` and ``SCHEMA_REGISTRY_URL`` replace or add their settings;
   ``SCHEMA_REGISTRY_USERNAME`` and ``SCHEMA_REGISTRY_PASSWORD`` do when a registry is set;
   ``METRICS_PORT`` replaces ``service.metrics_port`` (the container's health check uses it).
3. **The model** (:class:`~service.config.model.ConfigDocument`, pydantic): types, ranges,
   unknown keys, consumer factories and message classes imported.
4. **librdkafka**: every key of ``kafka.client``, ``kafka.consumer`` and ``kafka.producer`` is
   put to the client library (:mod:`service.backends.kafka.settings`); nothing connects.

A secret never appears in a problem: values at secret keys are never quoted, nor is a value
that came from a reference (a secret one level off its place is still a secret), and URLs
are shown with their user-info masked.

The settings the service owns (:data:`~service.backends.kafka.settings.OWNED`: auto-commit,
the group, the assignment strategy, the producer's idempotence and acks) are refused unless
set to the service's own value.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from service.backends.base import default_dead_letter_topic
from service.backends.kafka.settings import SECTIONS, refusals, service_owned
from service.config.model import ConfigDocument, QueueConfig, QueueSection, ServiceConfig
from service.config.references import Location, Problem, format_location, resolve_references
from service.errors import ConfigurationError
from service.redaction import Secret, is_secret_key, mask_text

__all__ = ["config_schema", "load_config", "parse_config"]

_HINTS: dict[Location, str] = {
    ("kafka",): "required (with bootstrap_servers, or set KAFKA_BOOTSTRAP_SERVERS)",
    ("kafka", "bootstrap_servers"): "required (or set KAFKA_BOOTSTRAP_SERVERS)",
    ("schema_registry", "url"): "required (or set SCHEMA_REGISTRY_URL)",
    ("queues",): "at least one queue is required",
}
_PLAIN = {
    "missing": "required",
    "string_type": "expected text",
    "string_too_short": "must not be empty",
    "bool_type": "expected true or false",
    "bool_parsing": "expected true or false",
    "dict_type": "expected a mapping",
    "model_type": "expected a mapping",
    "model_attributes_type": "expected a mapping",
    "list_type": "expected a list",
    "too_short": "must not be empty",
}
_MAX_SHOWN = 80
_NAMES_ITS_INPUT = frozenset({"missing", "import", "factory", "message_class"})
"""Problems whose text needs no ``got ...``: nothing was given, or the text names it."""


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> ServiceConfig:
    """Read and validate the YAML file at ``path`` (see the module docstring).

    Args:
        path: the YAML file.
        env: the environment for references and overrides (default: ``os.environ``).

    Raises:
        ConfigurationError: the file cannot be read or parsed, or has problems; the text
            lists every problem, one per line, each with its path.
    """
    try:
        document = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigurationError(f"{path}: cannot read: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigurationError(f"{path}: not valid YAML: {exc}") from exc
    return parse_config(document, os.environ if env is None else env, str(path))


def parse_config(document: Any, env: Mapping[str, str], source: str = "<config>") -> ServiceConfig:
    """Validate a parsed YAML document (see :func:`load_config`).

    Raises:
        ConfigurationError: the document has problems; all of them are in the text.
    """
    if document is None:
        document = {}
    if not isinstance(document, dict):
        raise ConfigurationError(f"{source}: expected a mapping at the top level")
    referenced: dict[Location, str] = {}
    resolved, problems = resolve_references(document, env, referenced)
    _apply_overrides(resolved, env)
    unresolved = {problem.where for problem in problems}
    model: ConfigDocument | None = None
    try:
        model = ConfigDocument.model_validate(resolved)
    except ValidationError as exc:
        found = _problems_of(exc.errors(), referenced)
        problems += [p for p in found if p.where not in unresolved]
    problems += _librdkafka_problems(resolved, unresolved)
    if problems or model is None:
        raise ConfigurationError(_report(source, problems, referenced))
    return _service_config(model, source)


def config_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of the configuration file, for editors and checks.

    Every value that is not a section also admits a reference string (``${env:NAME}``,
    ``${file:/path}``), as the loader does: a file the loader accepts is valid.
    """
    schema = ConfigDocument.model_json_schema()
    _admit_references(schema)
    schema["$defs"]["Reference"] = _REFERENCE_SCHEMA
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}


_REFERENCE_SCHEMA: dict[str, Any] = {
    "type": "string",
    "pattern": r"^\s*\$\{(env|file):[^}]+\}\s*$",
    "description": "${env:NAME} or ${file:/path}: replaced by the variable or the file's content",
}
_WRAPPER_KEYS = ("title", "description", "default")


def _admit_references(node: Any) -> None:
    """Let every value schema under ``node`` that is not a section take a reference too."""
    if not isinstance(node, dict):
        return
    for definition in node.get("$defs", {}).values():
        _admit_references(definition)
    for holder in ("properties", "patternProperties"):
        children = node.get(holder, {})
        for name, child in children.items():
            children[name] = _with_reference(child)
    if isinstance(node.get("additionalProperties"), dict):
        node["additionalProperties"] = _with_reference(node["additionalProperties"])
    if isinstance(node.get("items"), dict):
        node["items"] = _with_reference(node["items"])


def _with_reference(child: dict[str, Any]) -> dict[str, Any]:
    _admit_references(child)
    for member in child.get("anyOf", []):
        _admit_references(member)
    members = [child, *child.get("anyOf", [])]
    if any("$ref" in m or m.get("type") == "object" for m in members):
        return child  # a section: a reference resolves to text, never to a mapping
    wrapper = {key: child.pop(key) for key in _WRAPPER_KEYS if key in child}
    return {**wrapper, "anyOf": [child, {"$ref": "#/$defs/Reference"}]}


# -- step 2: environment overrides ------------------------------------------------------
_OVERRIDES: tuple[tuple[str, Location, bool], ...] = (
    # variable, the setting it replaces, whether it applies only when the section is there
    ("KAFKA_BOOTSTRAP_SERVERS", ("kafka", "bootstrap_servers"), False),
    ("KAFKA_SASL_USERNAME", ("kafka", "client", "sasl.username"), False),
    ("KAFKA_SASL_PASSWORD", ("kafka", "client", "sasl.password"), False),
    ("SCHEMA_REGISTRY_URL", ("schema_registry", "url"), False),
    ("SCHEMA_REGISTRY_USERNAME", ("schema_registry", "username"), True),
    ("SCHEMA_REGISTRY_PASSWORD", ("schema_registry", "password"), True),
    ("METRICS_PORT", ("service", "metrics_port"), False),  # the image's HEALTHCHECK reads it
)


def _apply_overrides(document: dict[Any, Any], env: Mapping[str, str]) -> None:
    for variable, where, only_with_section in _OVERRIDES:
        value = env.get(variable)
        if not value or (only_with_section and document.get(where[0]) is None):
            continue
        node = document
        for key in where[:-1]:
            if node.get(key) is None:
                node[key] = {}
            node = node[key]
            if not isinstance(node, dict):
                break  # not a mapping: the model reports it
        else:
            node[where[-1]] = Secret(value) if is_secret_key(str(where[-1])) else value


# -- step 3: the model's errors, as problems --------------------------------------------
def _problems_of(
    errors: Iterable[ErrorDetails], referenced: Mapping[Location, str]
) -> list[Problem]:
    problems = []
    for error in errors:
        where: Location = tuple(part for part in error["loc"] if part != "[key]")
        problems.append(Problem(where, _text_of(error, where, _referenced_at(where, referenced))))
    return problems


def _referenced_at(where: Location, referenced: Mapping[Location, str]) -> str | None:
    """The value a reference gave at ``where`` or at a section holding it; None if none."""
    for end in range(len(where), 0, -1):
        if where[:end] in referenced:
            return referenced[where[:end]]
    return None


def _text_of(error: ErrorDetails, where: Location, referenced: str | None = None) -> str:
    kind, context = error["type"], error.get("ctx", {})
    if kind == "extra_forbidden":
        known = _known_keys(where[:-1])
        return "unknown key" + (f" (known: {', '.join(known)})" if known else "")
    if kind in ("missing", "too_short") and where in _HINTS:
        return _HINTS[where]
    if kind == "literal_error":
        text = str(context.get("expected", "one of the listed values"))
    else:
        text = _PLAIN.get(kind, error["msg"])
    value = error.get("input")
    secret = (
        referenced is not None
        or isinstance(value, Secret)
        or (bool(where) and is_secret_key(str(where[-1])))
    )
    shown = repr(value)
    if len(shown) > _MAX_SHOWN:
        shown = shown[: _MAX_SHOWN - 4] + "...'"
    if (
        kind not in _NAMES_ITS_INPUT
        and not secret
        and isinstance(value, str | int | float | bool | None)
    ):
        text += f", got {shown}"
    return text


def _known_keys(where: Location) -> list[str]:
    """The keys the model knows in the section at ``where``; empty if it is no section."""
    node: type[BaseModel] | None = ConfigDocument
    parts = list(where)
    while parts and node is not None:
        part = parts.pop(0)
        if part not in node.model_fields:
            return []
        annotation = node.model_fields[part].annotation
        node = _model_in(annotation)
        if node is None and get_origin(annotation) is dict:
            if not parts:
                return []  # the mapping itself (queues): its keys are names
            node = _model_in(get_args(annotation)[1])
            parts.pop(0)  # the key, a queue's name
    return sorted(node.model_fields) if node is not None and not parts else []


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The model class of a section's annotation (``Model`` or ``Model | None``)."""
    if get_origin(annotation) is dict:
        return None
    for candidate in (annotation, *get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


# -- step 4: librdkafka -----------------------------------------------------------------
def _librdkafka_problems(document: dict[Any, Any], unresolved: set[Location]) -> list[Problem]:
    kafka = document.get("kafka")
    if not isinstance(kafka, dict):
        return []
    problems = []
    for name in SECTIONS:
        settings = kafka.get(name)
        if not isinstance(settings, dict):
            continue  # absent, or the model reports it
        checkable = {
            key: value
            for key, value in settings.items()
            if isinstance(key, str)
            and isinstance(value, str | int | float | bool | Secret)
            and ("kafka", name, key) not in unresolved
        }
        refused = refusals(name, checkable)
        for key, value in checkable.items():
            if key in refused:
                text: str | None = f"librdkafka refuses it: {refused[key]}"
            else:
                text = service_owned(name, key, value)
            if text is not None:
                problems.append(Problem(("kafka", name, key), text))
    return problems


_MASKED_ANYWHERE = 4
"""Referenced values this long are masked in every line; shorter ones only at their place."""


def _report(source: str, problems: list[Problem], referenced: Mapping[Location, str]) -> str:
    anywhere = [value for value in referenced.values() if len(value) >= _MASKED_ANYWHERE]
    lines = sorted(
        {
            mask_text(
                f"{format_location(problem.where)}: "
                + mask_text(problem.text, [_referenced_at(problem.where, referenced)]),
                anywhere,
            )
            for problem in problems
        }
    )
    if len(lines) == 1:
        return f"{source}: {lines[0]}"
    return f"{source}: {len(lines)} problems:\n" + "\n".join(f"  {line}" for line in lines)


# -- the service's view -----------------------------------------------------------------
def _service_config(model: ConfigDocument, source: str) -> ServiceConfig:
    queues = {name: _queue(name, section) for name, section in model.queues.items()}
    messages = {ref.target: serializer for ref, serializer in model.messages.items()}
    return ServiceConfig(
        model.kafka, queues, messages, model.schema_registry, model.service, source
    )


def _queue(name: str, section: QueueSection) -> QueueConfig:
    topics = tuple(section.topics) if section.topics is not None else (section.pattern or name,)
    return QueueConfig(
        name=name,
        topics=topics,
        group_id=section.group_id or name,
        consumers=tuple(ref.target for ref in section.consumers),
        consumer_paths=tuple(ref.path for ref in section.consumers),
        always_ack=section.always_ack,
        processing=section.processing,
        transaction=section.transaction,
        retry=section.retry,
        dead_letter_topic=section.dead_letter_topic or default_dead_letter_topic(name),
        dedup=section.dedup,
        concurrency=section.concurrency,
        ordering=section.ordering,
        max_in_flight=section.max_in_flight,
        max_in_flight_bytes=section.max_in_flight_bytes,
        subject_strategy=section.subject_strategy,
        dead_letter_limit=section.dead_letter_limit,
        headerless=(
            (section.headerless.serializer, section.headerless.type.target)
            if section.headerless is not None
            else None
        ),
        message_id=section.message_id,
        type_ids={name: ref.target for name, ref in section.type_ids.items()},
        key=section.key,
    )
