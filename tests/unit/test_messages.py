from __future__ import annotations

import pytest

from service import MalformedHeaderError, Message, MissingHeaderError
from service.messages import read_routing

GOOD = (("serializer_id", b"1"), ("manifest", b"DoPayment"), ("message_id", b"m-1"))


def test_routing_headers_are_decoded() -> None:
    routing = read_routing(Message("t", b"{}", (*GOOD, ("other", None))))
    assert routing == (1, "DoPayment", "m-1")


@pytest.mark.parametrize("dropped", ["serializer_id", "manifest", "message_id"])
def test_missing_header_names_it_and_the_location(dropped: str) -> None:
    headers = tuple(h for h in GOOD if h[0] != dropped)
    with pytest.raises(MissingHeaderError, match=rf"'{dropped}' is missing.*t\[2\]@9"):
        read_routing(Message("t", b"{}", headers, partition=2, offset=9))


@pytest.mark.parametrize(
    "headers",
    [
        (("serializer_id", b"json"), *GOOD[1:]),
        (("serializer_id", b"-1"), *GOOD[1:]),
        (("serializer_id", "\u0661".encode()), *GOOD[1:]),  # non-ASCII digit
        (*GOOD, ("manifest", b"\xff")),
        (*GOOD[:2], ("message_id", b"\xc3\x28")),
    ],
)
def test_malformed_headers_are_rejected(headers: tuple[tuple[str, bytes], ...]) -> None:
    with pytest.raises(MalformedHeaderError):
        read_routing(Message("t", b"{}", headers))


def test_repeated_header_with_same_value_is_fine() -> None:
    assert read_routing(Message("t", b"", (*GOOD, GOOD[0])))[0] == 1


def test_header_returns_last_value() -> None:
    message = Message("t", b"", (("a", b"1"), ("a", b"2")))
    assert message.header("a") == b"2"
    assert message.header("b") is None
