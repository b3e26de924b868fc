"""Signed, expiring, per-client "proceed anyway" tokens and the grants they buy.

A token is an HMAC over (client address, host, expiry) with a secret only the
proxy knows, so a web page cannot mint one. It is never put on the blocked site's
origin (a script there could fetch the block page and post its form): the block
page only links to a page on the proxy's own origin, ``http://PROCEED_HOST/``,
which the proxy answers itself and no web origin can read (no CORS, no framing).
That page carries the token, and a grant needs a person's click on it: a
same-origin, user-activated, top-level navigation (:func:`navigation_problem`).
No mitmproxy here: the addon calls it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

# The proxy's own origin for the confirmation page: ``.invalid`` never resolves
# (RFC 2606), so only the proxy can answer it and no site can share its origin.
PROCEED_HOST: Final = "proceed.jectguard.invalid"
PROCEED_ORIGINS: Final = frozenset({f"http://{PROCEED_HOST}", f"https://{PROCEED_HOST}"})
# How long a block page's form stays usable.
FORM_TTL_SECONDS: Final = 600
# Grants held at most (a home proxy needs a handful; this bounds memory).
MAX_GRANTS: Final = 10_000
# Shortest secret an operator may configure.
MIN_SECRET_LENGTH: Final = 16


def random_secret() -> bytes:
    return secrets.token_bytes(32)


@dataclass(slots=True)
class ProceedSigner:
    """Issues and verifies proceed tokens and keeps the grants they produced."""

    secret: bytes
    minutes: int
    grants: dict[tuple[str, str], float]

    @classmethod
    def create(cls, secret: bytes, minutes: int) -> ProceedSigner:
        return cls(secret, minutes, {})

    def _sign(self, client: str, host: str, expires: int) -> str:
        msg = f"v1\x00{client}\x00{host}\x00{expires}".encode("utf-8", "surrogatepass")
        digest = hmac.new(self.secret, msg, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")

    def issue(self, client: str, host: str, now: float | None = None) -> dict[str, str]:
        """The hidden form fields for one block page."""
        expires = int((time.time() if now is None else now) + FORM_TTL_SECONDS)
        return {"host": host, "exp": str(expires), "sig": self._sign(client, host, expires)}

    def verify(
        self, client: str, fields: dict[str, str], now: float | None = None
    ) -> tuple[str | None, str]:
        """(host, "") when the fields are a valid token for this client, else (None, reason)."""
        now = time.time() if now is None else now
        host, exp, sig = fields.get("host", ""), fields.get("exp", ""), fields.get("sig", "")
        if not host or not exp.isdigit() or not sig or len(exp) > 12:
            return None, "malformed token"
        expires = int(exp)
        if not hmac.compare_digest(sig, self._sign(client, host, expires)):
            return None, "bad signature"
        if expires < now or expires > now + FORM_TTL_SECONDS + 60:
            return None, "expired"
        return host, ""

    def grant(self, client: str, host: str, now: float | None = None) -> float:
        """Let ``client`` reach ``host`` for the configured minutes; returns the expiry."""
        now = time.time() if now is None else now
        if len(self.grants) >= MAX_GRANTS:
            self.grants = {k: t for k, t in self.grants.items() if t > now}
            while len(self.grants) >= MAX_GRANTS:
                self.grants.pop(next(iter(self.grants)))
        until = now + self.minutes * 60
        self.grants.pop((client, host), None)  # re-insert: dict order is grant order
        self.grants[(client, host)] = until
        return until

    def granted(self, client: str, host: str | None, now: float | None = None) -> bool:
        if not self.grants or host is None:
            return False
        until = self.grants.get((client, host))
        if until is None:
            return False
        if until < (time.time() if now is None else now):
            del self.grants[(client, host)]
            return False
        return True


def navigation_problem(header: Callable[[str], str | None], *, submit: bool) -> str | None:
    """Why a request to the proceed origin is not a person's top-level navigation.

    Fetch metadata is checked where the browser sends it (every current browser
    does, and a page cannot forge it): a ``fetch()``, XHR, frame or image is never
    a navigation. A grant (``submit``) must also come from a click on the proceed
    page itself: same origin and user-activated. A form posted by another origin
    carries its ``Origin``. Without any of these headers (curl, old browsers) the
    signed token alone decides.
    """
    mode, dest = header("sec-fetch-mode"), header("sec-fetch-dest")
    if mode is not None and mode.strip().lower() != "navigate":
        return f"not a navigation (Sec-Fetch-Mode: {mode[:40]})"
    if dest is not None and dest.strip().lower() != "document":
        return f"not a top-level page (Sec-Fetch-Dest: {dest[:40]})"
    if not submit:
        return None
    site, user, origin = header("sec-fetch-site"), header("sec-fetch-user"), header("origin")
    if site is not None and site.strip().lower() != "same-origin":
        return f"not submitted from the proceed page (Sec-Fetch-Site: {site[:40]})"
    if mode is not None and (user or "").strip() != "?1":
        return "not a click by a person (no Sec-Fetch-User)"
    if origin is not None and origin.strip().lower() not in PROCEED_ORIGINS:
        return f"posted from another origin ({origin[:80]})"
    return None
