"""Signed, expiring, per-client "proceed anyway" tokens and the grants they buy.

A token is an HMAC over (client address, host, expiry) with a secret only the
proxy knows, so a web page cannot mint one; it is only ever sent inside a
block page to the client it names. No mitmproxy here: the addon calls it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from typing import Final

# The path on the blocked host that the block page's form posts to.
PROCEED_PATH: Final = "/.well-known/jectguard/proceed"
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
