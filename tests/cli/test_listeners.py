"""The exposure guard of ``jectguard run``: every address mitmproxy will bind, as it binds it.

The refusal by the real process is in tests/e2e/test_hostile_listeners.py.
"""

from __future__ import annotations

import pytest

from proxy_addons.cli.run import exposure_problem, plan_listeners

# (mode values, listen_host) -> the addresses mitmproxy binds, by its own rules
CASES = [
    (["regular"], "127.0.0.1", [("127.0.0.1", 8080)]),
    (["regular@0.0.0.0:9000"], "127.0.0.1", [("0.0.0.0", 9000)]),
    (["regular@:::9000"], "127.0.0.1", [("::", 9000)]),
    (["regular@:9000"], "127.0.0.1", [("", 9000)]),  # empty: every interface
    (["socks5"], "", [("", 8080)]),
    (["regular", "socks5@0.0.0.0:1080"], "127.0.0.1", [("127.0.0.1", 8080), ("0.0.0.0", 1080)]),
    (["reverse:https://example.com@[::1]:8443"], "0.0.0.0", [("[::1]", 8443)]),
    (["wireguard"], "10.0.0.1", [("10.0.0.1", 8080)]),
    (["local"], "0.0.0.0", []),  # binds no port: intercepts this machine's own traffic
]


@pytest.mark.parametrize(("modes", "listen_host", "expected"), CASES)
def test_plan_listeners_follows_mitmproxy(
    modes: list[str], listen_host: str, expected: list[tuple[str, int]]
) -> None:
    got = [(lst.host, lst.port) for lst in plan_listeners(modes, listen_host, 8080)]
    assert got == expected


def test_server_off_listens_nowhere() -> None:
    assert plan_listeners(["regular@0.0.0.0:1"], "0.0.0.0", 8080, server=False) == []


def test_bad_mode_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        plan_listeners(["regular@0.0.0.0:notaport"], "127.0.0.1", 8080)


@pytest.mark.parametrize(
    ("modes", "listen_host", "proxyauth", "allow", "refused"),
    [
        (["regular"], "127.0.0.1", "", [], False),
        (["regular"], "localhost", "", [], False),
        (["regular"], "::1", "", [], False),
        (["regular"], "::ffff:127.0.0.1", "", [], False),
        (["regular"], "", "", [], True),
        (["regular"], "0.0.0.0", "", [], True),
        (["regular"], "0.0.0.0", "u:p", [], False),
        (["regular"], "0.0.0.0", "", ["10.0.0.0/8"], False),
        (["socks5@0.0.0.0:1080"], "127.0.0.1", "u:p", [], False),
        (["transparent@0.0.0.0:1"], "127.0.0.1", "u:p", [], True),  # no login to ask for
        (["reverse:tcp://h:1@0.0.0.0:2"], "127.0.0.1", "u:p", [], True),
        (["wireguard@0.0.0.0:51820"], "127.0.0.1", "", [], True),
        (["wireguard@0.0.0.0:51820"], "127.0.0.1", "", ["10.0.0.0/8"], False),
        (["regular", "regular@192.0.2.1:9"], "127.0.0.1", "", [], True),
        (["regular@name.invalid:9"], "127.0.0.1", "", [], True),  # does not resolve
    ],
)
def test_exposure(
    modes: list[str], listen_host: str, proxyauth: str, allow: list[str], refused: bool
) -> None:
    problem = exposure_problem(plan_listeners(modes, listen_host, 8080), proxyauth, allow)
    assert (problem is not None) == refused, problem
    if refused:
        assert problem and "--allow-clients" in problem
