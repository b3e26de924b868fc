"""URLs and authorities built from parts, with IPv6 hosts in brackets.

mitmproxy's ``Request.url`` and ``host:port`` concatenation leave an IPv6 host
bare (``http://fd00::2:8080/x``), which no URL parser reads as that host: the
check then falls back to the host alone and URL rules are skipped.
"""

from __future__ import annotations

from typing import Final

DEFAULT_PORTS: Final = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def url_host(host: str) -> str:
    """``host`` as it appears in a URL or an authority: IPv6 in brackets."""
    if ":" in host and not host.startswith("["):
        return f"[{host}]"
    return host


def authority(host: str, port: int) -> str:
    """``host:port`` with an IPv6 host in brackets."""
    return f"{url_host(host)}:{port}"


def request_url(scheme: str, host: str, port: int, path: str) -> str:
    """The URL of a request: the port only when it is not the scheme's default.

    A path that is not origin-form (``*``, an authority) is shown as ``/``.
    """
    hostport = url_host(host) if DEFAULT_PORTS.get(scheme) == port else authority(host, port)
    return f"{scheme}://{hostport}{path if path.startswith('/') else '/'}"


__all__ = ["authority", "request_url", "url_host"]
