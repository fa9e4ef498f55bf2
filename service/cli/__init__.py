"""The command line: ``kafka-dispatch`` (or ``python -m service``).

Each command lives in a module of this package exposing ``register(commands)``, which adds
its sub-parser and sets ``handler`` to a function taking the parsed arguments and returning
the exit code. Exit codes: 0 success, 1 runtime failure, 2 usage or configuration error.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version

from service.cli import config, dlq, publish, run, schemas, topics
from service.errors import ConfigurationError, ServiceError

__all__ = ["EXIT_FAILURE", "EXIT_OK", "EXIT_USAGE", "main", "package_version"]

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
COMMANDS = (
    run,
    schemas,
    topics,
    publish,
    dlq,
    config,
)
DISTRIBUTION = "kafka-dispatch-service"


def package_version() -> str:
    """The installed version of the package, or ``unknown`` when it is not installed."""
    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command."""
    parser = argparse.ArgumentParser(
        prog="kafka-dispatch",
        description="Run and operate the Kafka consumer service.",
        epilog="exit codes: 0 ok, 1 runtime failure, 2 usage or configuration error",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS:
        module.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        code: int = args.handler(args)
    except ConfigurationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ServiceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    return code
