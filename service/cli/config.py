"""``config schema`` and ``config check``: the configuration file's JSON Schema, and a dry check.

``config schema`` prints the JSON Schema (draft 2020-12) of the YAML configuration; point an
editor at it for completion and checking as you type (YAML language server:
``# yaml-language-server: $schema=kafka-dispatch.schema.json``). ``config check -c PATH``
loads the configuration as ``run`` would (references, overrides, consumer imports, librdkafka
settings) without connecting to anything, and prints every problem.

Exit codes: 0 valid, 2 the configuration has problems.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from service.cli.topics import add_config_option, load
from service.config import config_schema

__all__ = ["register"]

EXIT_OK = 0


def register(commands: Any) -> None:
    """Add ``config schema`` and ``config check``."""
    parser = commands.add_parser("config", help="the configuration's JSON Schema; check a file")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    schema = actions.add_parser(
        "schema",
        help="print the configuration's JSON Schema (for editor completion)",
        description="Print the JSON Schema (draft 2020-12) of the YAML configuration file.",
    )
    schema.set_defaults(handler=_schema)
    check = actions.add_parser(
        "check",
        help="load the configuration as run would, connecting to nothing",
        description=(
            "Load and validate the configuration as run would: references, environment "
            "overrides, consumer imports, librdkafka settings. Nothing connects. Every "
            "problem is printed, one per line, with its path; exit 2 if there is any."
        ),
    )
    add_config_option(check)
    check.set_defaults(handler=_check)


def _schema(args: argparse.Namespace) -> int:
    print(json.dumps(config_schema(), indent=2, sort_keys=False))
    return EXIT_OK


def _check(args: argparse.Namespace) -> int:
    config = load(args)
    queues = ", ".join(config.queues)
    print(f"{config.source}: valid ({len(config.queues)} queues: {queues})")
    return EXIT_OK
