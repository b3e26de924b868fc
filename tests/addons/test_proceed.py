"""Proceed-anyway tokens: signed, expiring, per client and per host."""

from __future__ import annotations

import pytest

from proxy_addons.addons.proceed import (
    FORM_TTL_SECONDS,
    MAX_GRANTS,
    PROCEED_HOST,
    ProceedSigner,
    navigation_problem,
)


def signer() -> ProceedSigner:
    return ProceedSigner.create(b"k" * 32, minutes=10)


def test_round_trip() -> None:
    s = signer()
    fields = s.issue("10.0.0.1", "evil.test", now=1000)
    assert s.verify("10.0.0.1", fields, now=1001) == ("evil.test", "")


def test_wrong_client_host_key_or_tampering() -> None:
    s = signer()
    fields = s.issue("10.0.0.1", "evil.test", now=1000)
    assert s.verify("10.0.0.2", fields, now=1001)[0] is None
    assert s.verify("10.0.0.1", {**fields, "host": "other.test"}, now=1001)[0] is None
    assert s.verify("10.0.0.1", {**fields, "exp": str(int(fields["exp"]) + 1)}, now=1001)[0] is None
    other = ProceedSigner.create(b"x" * 32, minutes=10)
    assert other.verify("10.0.0.1", fields, now=1001)[0] is None
    assert s.verify("10.0.0.1", {}, now=1001) == (None, "malformed token")


def test_expiry() -> None:
    s = signer()
    fields = s.issue("10.0.0.1", "evil.test", now=1000)
    assert s.verify("10.0.0.1", fields, now=1000 + FORM_TTL_SECONDS + 1) == (None, "expired")


def test_grants_expire_and_are_bounded() -> None:
    s = signer()
    s.grant("c", "evil.test", now=0)
    assert s.granted("c", "evil.test", now=599)
    assert not s.granted("c", "evil.test", now=601)
    assert not s.granted("d", "evil.test", now=1)
    for i in range(MAX_GRANTS + 5):
        s.grant("c", f"h{i}.test", now=10)
    assert len(s.grants) <= MAX_GRANTS
    assert s.granted("c", f"h{MAX_GRANTS + 4}.test", now=11)


CLICK = {
    "sec-fetch-mode": "navigate",
    "sec-fetch-dest": "document",
    "sec-fetch-user": "?1",
    "sec-fetch-site": "same-origin",
    "origin": f"http://{PROCEED_HOST}",
}


@pytest.mark.parametrize(
    ("headers", "submit", "ok"),
    [
        (CLICK, True, True),
        ({}, True, True),  # curl, old browsers: the signed token alone decides
        ({**CLICK, "sec-fetch-site": "cross-site"}, False, True),  # opening the page is fine
        ({**CLICK, "sec-fetch-site": "cross-site"}, True, False),
        ({**CLICK, "sec-fetch-mode": "cors"}, False, False),
        ({**CLICK, "sec-fetch-mode": "no-cors"}, True, False),
        ({**CLICK, "sec-fetch-dest": "iframe"}, True, False),
        ({k: v for k, v in CLICK.items() if k != "sec-fetch-user"}, True, False),
        ({**CLICK, "origin": "https://evil.test"}, True, False),
        ({"origin": "null"}, True, False),
    ],
)
def test_navigation_problem(headers: dict[str, str], submit: bool, ok: bool) -> None:
    assert (navigation_problem(headers.get, submit=submit) is None) is ok
