"""``run -c service.yaml [--processes N]``: every configured queue until SIGTERM/SIGINT."""

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
            "at once (uncommitted work is delivered again). With --processes N, N child "
            "processes (N members of each group) run under one supervisor that forwards "
            "signals, restarts a crashed child with back-off and serves one /metrics, "
            "/healthz and /readyz for all (docs/processes.md)."
        ),
    )
    add_config_option(parser)
    parser.add_argument(
        "--processes",
        type=_positive,
        default=1,
        metavar="N",
        help="group members as child processes, about one per core (default 1: no supervisor)",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)  # internal: <index>:<report fd>
    parser.set_defaults(handler=_run)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 1")
    return value


def _run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    configure_logging(config.runtime.log_level, config.runtime.log_format)
    if args.child is not None:
        from service.supervisor import run_child

        return run_child(config, args.child)
    if args.processes > 1:
        from service.supervisor import Supervisor

        return Supervisor(config, args.config, args.processes).run()
    return ServiceRunner(config).run()
