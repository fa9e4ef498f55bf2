"""``run -c service.yaml``: every configured queue in one process until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
from typing import Any

from service.cli.topics import add_config_option
from service.config import load_config
from service.logs import configure_logging
from service.runner import ServiceRunner

__all__ = ["register"]


def register(commands: Any) -> None:
    """Add ``run``."""
    parser = commands.add_parser(
        "run",
        help="consume every configured queue until SIGTERM/SIGINT",
        description=(
            "Consume every queue of the configuration, each as its own consumer-group "
            "member, with metrics and probes on the configured port. The first SIGTERM or "
            "SIGINT finishes the messages in hand, commits and exits 0; a second one exits "
            "at once (uncommitted work is delivered again)."
        ),
    )
    add_config_option(parser)
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    configure_logging(config.runtime.log_level, config.runtime.log_format)
    return ServiceRunner(config).run()
