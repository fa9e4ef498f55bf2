"""``schemas register`` and ``schemas check``: the local Avro schemas against the registry.

Exit codes: 0 success, 1 an incompatible schema or a registry failure, 2 usage error.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from service.errors import ConfigurationError
from service.schema_registry import SchemaRegistry
from service.schemas.catalog import SchemaCatalog, SchemaFile
from service.schemas.compat import breaking_changes

__all__ = ["register"]

EXIT_OK, EXIT_FAILURE = 0, 1


def register(commands: Any) -> None:
    """Add ``schemas register`` and ``schemas check``."""
    schemas = commands.add_parser("schemas", help="register or check the Avro schemas")
    actions = schemas.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, text in (
        ("register", "register what is new (compatibility checked first); idempotent"),
        ("check", "check compatibility with what is registered; registers nothing"),
    ):
        action = actions.add_parser(name, help=text, description=text)
        action.add_argument(
            "--registry",
            default=os.environ.get("SCHEMA_REGISTRY_URL"),
            help="registry URL (default: $SCHEMA_REGISTRY_URL)",
        )
        action.add_argument("--schemas", default="schemas", help="directory of .avsc files")
        action.add_argument(
            "--topic",
            help="use the topic-record subject strategy (<topic>-<record>) for this topic",
        )
        action.set_defaults(
            handler=lambda args: _schemas(args.action, args.registry, args.schemas, args.topic)
        )


def _schemas(action: str, url: str | None, directory: str, topic: str | None) -> int:
    if not url:
        raise ConfigurationError("no registry: pass --registry or set SCHEMA_REGISTRY_URL")
    catalog = SchemaCatalog(directory)
    failed = False
    with SchemaRegistry(url) as registry:
        for schema in catalog:
            subject = f"{topic}-{schema.manifest}" if topic else schema.manifest
            failed |= not _one(action, registry, subject, schema)
    return EXIT_FAILURE if failed else EXIT_OK


def _one(action: str, registry: SchemaRegistry, subject: str, schema: SchemaFile) -> bool:
    found = registry.lookup(subject, schema.text)
    if found is not None:
        print(f"{subject}\tversion {found.version}\tid {found.schema_id}\tunchanged")
        return True
    latest = registry.latest(subject)
    if latest is not None:
        problems = breaking_changes(schema.definition, json.loads(latest.text))
        if not problems and not registry.is_compatible(subject, schema.text):
            problems = [f"the registry refuses it under its compatibility rule for {subject}"]
        if problems:
            print(
                f"{subject}\tINCOMPATIBLE with version {latest.version} ({schema.path}):",
                file=sys.stderr,
            )
            for problem in problems:
                print(f"  {problem}", file=sys.stderr)
            return False
    if action == "check":
        state = "new subject" if latest is None else f"compatible with version {latest.version}"
        print(f"{subject}\t{state}\tnot registered (check only)")
        return True
    schema_id = registry.register(subject, schema.text)
    registered = registry.lookup(subject, schema.text)
    version = registered.version if registered is not None else "?"
    print(f"{subject}\tversion {version}\tid {schema_id}\tregistered")
    return True
