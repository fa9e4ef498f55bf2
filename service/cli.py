"""The command line: ``kafka-dispatch`` (or ``python -m service``).

Exit codes: 0 success, 1 runtime failure (including an incompatible schema), 2 usage or
configuration error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from service.errors import ConfigurationError, ServiceError
from service.schema_registry import SchemaRegistry
from service.schemas.catalog import SchemaCatalog, SchemaFile
from service.schemas.compat import breaking_changes

__all__ = ["main"]

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kafka-dispatch", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    schemas = commands.add_parser("schemas", help="register or check the Avro schemas")
    actions = schemas.add_subparsers(dest="action", required=True)
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "schemas":
            return _schemas(args.action, args.registry, args.schemas, args.topic)
    except ConfigurationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ServiceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_USAGE  # pragma: no cover - argparse requires a command


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


if __name__ == "__main__":
    sys.exit(main())
