"""Secret, mask_url and mask_text; librdkafka's refusals never quote a secret."""

from __future__ import annotations

import pytest

from service.backends.kafka.settings import refusals
from service.redaction import Secret, is_secret_key, mask_text, mask_url, reveal


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://svc:s3cr3t@registry:8081/apis", "http://svc:***@registry:8081/apis"),
        ("https://svc:p%40ss@registry/x?y=1#z", "https://svc:***@registry/x?y=1#z"),
        ("http://token@registry:8081", "http://***@registry:8081"),
        ("http://svc:pw@with@at@registry:8081/", "http://svc:***@registry:8081/"),
        ("http://registry:8081/apis", "http://registry:8081/apis"),
        ("registry:8081", "registry:8081"),
        ("", ""),
    ],
)
def test_mask_url_hides_the_user_info_password(url: str, shown: str) -> None:
    assert mask_url(url) == shown


def test_mask_text_hides_urls_and_named_secrets_in_any_text() -> None:
    text = (
        "ConnectError for url 'http://svc:s3cr3t@registry:8081/subjects' "
        "and https://other:pw2@host/ (password hunter2)"
    )
    masked = mask_text(text, ["hunter2", None, "", Secret("nothing-here")])
    assert masked == (
        "ConnectError for url 'http://svc:***@registry:8081/subjects' "
        "and https://other:***@host/ (password ***)"
    )


def test_secret_never_shows_its_value() -> None:
    secret = Secret("hunter2")
    assert str(secret) == repr(secret) == "Secret('***')"
    assert f"{secret} {[secret]} { ({'k': secret}) }".count("hunter2") == 0
    assert reveal({"sasl.password": secret, "acks": "all"}) == {
        "sasl.password": "hunter2",
        "acks": "all",
    }
    assert secret == Secret("hunter2") != Secret("other")


@pytest.mark.parametrize(
    ("key", "secret"),
    [
        ("sasl.password", True),
        ("ssl.key.password", True),
        ("ssl.key.pem", True),
        ("sasl.oauthbearer.client.secret", True),
        ("password", True),
        ("sasl.username", False),
        ("ssl.ca.location", False),
    ],
)
def test_which_keys_hold_secrets(key: str, secret: bool) -> None:
    assert is_secret_key(key) is secret


def test_a_refused_secret_setting_is_not_quoted() -> None:
    plain = refusals("client", {"sasl.oauthbearer.method": "planted-value-1"})
    wrapped = refusals("client", {"sasl.oauthbearer.method": Secret("planted-value-2")})
    for found in (plain, wrapped):
        assert list(found) == ["sasl.oauthbearer.method"]
        assert "planted-value" not in found["sasl.oauthbearer.method"]
        assert 'Invalid value "***"' in found["sasl.oauthbearer.method"]
    visible = refusals("consumer", {"auto.offset.reset": "soonest"})
    assert 'Invalid value "soonest"' in visible["auto.offset.reset"]  # not a secret: quoted


def test_client_settings_must_suit_consumers_and_producers() -> None:
    assert refusals("consumer", {"on_commit": "x"})  # not callable
    assert (
        "No such configuration property" in refusals("producer", {"on_commit": print})["on_commit"]
    )
    assert refusals("client", {"session.timeout.ms": 6000}) == {}  # producers ignore it
    assert refusals("client", {"enable.idempotence": "sometimes"})
