"""``schemas register`` and ``schemas check``: the local Avro schemas against the registry.

The registry comes from the configuration (``-c``, as for the other commands): its URL,
basic auth and TLS settings, and its schemas directory. ``--registry`` and ``--schemas``
override those; without a configuration, ``--registry`` or ``$SCHEMA_REGISTRY_URL`` names the
registry and ``$SCHEMA_REGISTRY_USERNAME``/``$SCHEMA_REGISTRY_PASSWORD`` its credentials.
The registry's URL is always shown with its password masked.

Exit codes: 0 success, 1 an incompatible schema or a registry failure, 2 usage or
configuration error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from service.cli.topics import DEFAULT_CONFIG
from service.config import RegistryConfig, load_config
from service.errors import ConfigurationError
from service.redaction import Secret
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
            "-c",
            "--config",
            metavar="PATH",
            help=(
                "the YAML configuration: registry URL, credentials, TLS, schemas directory "
                f"(default: $SERVICE_CONFIG, else {DEFAULT_CONFIG} if it exists)"
            ),
        )
        action.add_argument(
            "--registry",
            help="registry URL (default: the configuration's, else $SCHEMA_REGISTRY_URL)",
        )
        action.add_argument(
            "--schemas",
            help="directory of .avsc files (default: the configuration's, else schemas)",
        )
        action.add_argument(
            "--topic",
            help="use the topic-record subject strategy (<topic>-<record>) for this topic",
        )
        action.set_defaults(handler=_schemas)


def _schemas(args: argparse.Namespace) -> int:
    settings = _registry_settings(args)
    catalog = SchemaCatalog(args.schemas or settings.schemas)
    failed = False
    with SchemaRegistry.from_config(settings) as registry:
        for schema in catalog:
            subject = f"{args.topic}-{schema.manifest}" if args.topic else schema.manifest
            failed |= not _one(args.action, registry, subject, schema)
    return EXIT_FAILURE if failed else EXIT_OK


def _registry_settings(args: argparse.Namespace) -> RegistryConfig:
    """The registry to use: the configuration's, with ``--registry`` overriding its URL.

    Raises:
        ConfigurationError: no registry is named, or the configuration is invalid.
    """
    path = args.config or os.environ.get("SERVICE_CONFIG")
    if path is None and Path(DEFAULT_CONFIG).is_file():
        path = DEFAULT_CONFIG
    configured = load_config(path).registry if path else None
    if configured is not None:
        return configured.model_copy(update={"url": args.registry} if args.registry else {})
    url = args.registry or os.environ.get("SCHEMA_REGISTRY_URL")
    if not url:
        where = f"{path} has no schema_registry; " if path else ""
        raise ConfigurationError(
            f"no registry: {where}pass -c CONFIG or --registry URL, or set SCHEMA_REGISTRY_URL"
        )
    password = os.environ.get("SCHEMA_REGISTRY_PASSWORD")
    return RegistryConfig(
        url=url,
        username=os.environ.get("SCHEMA_REGISTRY_USERNAME") or None,
        password=Secret(password) if password else None,
    )


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
