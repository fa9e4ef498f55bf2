"""The floor of the per-record work the handler API implies, against the raw loop's own work.

``python -m bench.floor_case`` times, on one JSON record of the JSON case (no broker):

* the raw loop's work: ``headers()``, ``value()`` and msgspec's typed decode into ``Order``;
* what any dispatcher keeping the API must add per record, whatever language it is in,
  each at its cheapest in Python: the five other getters (topic, partition, offset, key,
  timestamp) a ``Message``/``Record`` carries, the two tuples built with ``tuple.__new__``,
  the handler call with its documented keywords (``process(data, message_id=...,
  record=...)``) and the message id decoded from its header.

Routing, commit bookkeeping, outputs and metrics are left out: they would only add. With
``--raw-us`` (the raw loop's whole CPU per record from ``make bench``, ``consume()`` and
librdkafka's threads included) it prints the best ratio to that loop a dispatcher could
reach if everything left out were free: raw / (raw + floor).
"""

from __future__ import annotations

import argparse
import json
import timeit
import uuid
from typing import Any

import msgspec
from confluent_kafka import Message as KafkaMessage

from bench.records import MANIFEST, Order
from service.messages import Message, Record

RUNS = 200_000


class _NoOp:
    def process(self, message: Any, **kwargs: Any) -> None:
        """A no-op consumer, as the JSON case's."""


def _ns(statement: str, names: dict[str, Any]) -> float:
    best = min(timeit.repeat(statement, globals=names, number=RUNS, repeat=7))
    return best / RUNS * 1e9


def main() -> None:
    """Print each part in nanoseconds and the ratio they leave."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--raw-us", type=float, help="the raw loop's CPU us per record")
    args = parser.parse_args()
    body = {"order_id": "order-00000001", "amount": 1, "currency": "EUR", "note": "x" * 120}
    headers = [
        ("serializer_id", b"1"),
        ("manifest", MANIFEST.encode()),
        ("message_id", uuid.uuid4().hex.encode()),
    ]
    record = KafkaMessage(
        topic="t",
        partition=1,
        offset=5,
        key=b"k1",
        value=json.dumps(body).encode(),
        headers=headers,
        timestamp=(1, 1_700_000_000_000),
    )
    names: dict[str, Any] = {
        "r": record,
        "decode": msgspec.json.Decoder(Order).decode,
        "new": tuple.__new__,
        "Message": Message,
        "Record": Record,
        "consumer": _NoOp(),
        "raw_id": headers[2][1],
    }
    raw = _ns("r.headers(); decode(r.value())", names)
    parts = {
        "the five other getters": _ns(
            "r.topic(); r.partition(); r.offset(); r.key(); r.timestamp()", names
        ),
        "Message and Record (tuple.__new__)": _ns(
            "new(Message, ('t', b'v', (), b'k', 1, 5, 17, 1));"
            "new(Record, ('t', 1, 5, b'k', (), 17, 'id', 1))",
            names,
        ),
        "handler call, message_id= and record=": _ns(
            "consumer.process(1, message_id='x', record=2)", names
        ),
        "message id header decoded": _ns("raw_id.decode('utf-8')", names),
    }
    print(f"raw loop's work (headers, value, typed decode): {raw:,.0f} ns")
    for name, cost in parts.items():
        print(f"  + {name}: {cost:,.0f} ns")
    floor = sum(parts.values())
    print(f"floor added by the API: {floor:,.0f} ns")
    if args.raw_us:
        whole = args.raw_us * 1000
        best = whole / (whole + floor)
        print(f"best ratio to a raw loop of {args.raw_us} us per record: {best:.2f}")


if __name__ == "__main__":
    main()
