"""SchemaCatalog: the ``.avsc`` files of ``schemas/``, one record per message type."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fastavro
from fastavro.schema import SchemaParseException

from service.errors import ConfigurationError

__all__ = ["SchemaCatalog", "SchemaFile"]


@dataclass(frozen=True, slots=True)
class SchemaFile:
    """One message type's schema.

    Attributes:
        manifest: the record's full name (``namespace.Name``), the message's manifest.
        path: the file it was read from.
        definition: the schema as JSON (what the registry receives).
        parsed: the schema parsed by fastavro, once.
        text: ``definition`` as compact JSON text.
    """

    manifest: str
    path: Path
    definition: dict[str, Any]
    parsed: dict[str, Any]
    text: str


class SchemaCatalog:
    """Loads every ``*.avsc`` of a directory, keyed by record full name.

    Raises:
        ConfigurationError: a file is not JSON, not a valid Avro record schema, or two files
            define the same record.
    """

    def __init__(self, directory: Path | str) -> None:
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise ConfigurationError(f"schema directory {self.directory} does not exist")
        self._files: dict[str, SchemaFile] = {}
        for path in sorted(self.directory.glob("*.avsc")):
            schema = load_schema_file(path)
            other = self._files.get(schema.manifest)
            if other is not None:
                raise ConfigurationError(
                    f"{path} and {other.path} both define the record {schema.manifest}"
                )
            self._files[schema.manifest] = schema

    def __getitem__(self, manifest: str) -> SchemaFile:
        """The schema of ``manifest``.

        Raises:
            KeyError: no file defines it.
        """
        return self._files[manifest]

    def get(self, manifest: str) -> SchemaFile | None:
        """The schema of ``manifest``, or ``None``."""
        return self._files.get(manifest)

    def __iter__(self) -> Iterator[SchemaFile]:
        """Every schema, by manifest."""
        return iter(self._files.values())

    def __len__(self) -> int:
        """How many schemas were loaded."""
        return len(self._files)


def load_schema_file(path: Path) -> SchemaFile:
    """Read and parse one ``.avsc`` file holding a named record.

    Raises:
        ConfigurationError: it is not JSON or not a valid Avro record schema.
    """
    try:
        definition = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"{path}: cannot read the schema: {exc}") from exc
    return schema_from_definition(definition, path)


def schema_from_definition(definition: Any, path: Path) -> SchemaFile:
    """Parse a schema given as JSON, ``path`` naming where it came from in errors."""
    if not isinstance(definition, dict) or definition.get("type") != "record":
        raise ConfigurationError(f"{path}: the top level must be a record schema")
    try:
        parsed: dict[str, Any] = fastavro.parse_schema(definition, named_schemas={})  # type: ignore[assignment]
    except (SchemaParseException, ValueError, TypeError, KeyError) as exc:
        raise ConfigurationError(f"{path}: invalid Avro schema: {exc}") from exc
    return SchemaFile(
        parsed["name"], path, definition, parsed, json.dumps(definition, separators=(",", ":"))
    )
