"""The injection signatures file: read (size-capped, UTF-8) here, parsed by the core.

One reader for the strip addon and the ``jectguard strip`` command, so the command
accepts and refuses exactly the files the proxy does. No mitmproxy here: the
command must not import it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from proxy_addons.core.errors import JectguardError
from proxy_addons.core.signatures import Signature, parse_signatures
from proxy_addons.lists.sources import SHIPPED_LISTS

DEFAULT_SIGNATURES: Final = SHIPPED_LISTS / "signatures.toml"
# A signatures file is small and hand-written.
MAX_SIGNATURES_FILE_BYTES: Final = 1024 * 1024


def read_signatures(path: str) -> tuple[str, list[Signature]]:
    """The text of a signatures file and its parse (the text goes to the scan workers).

    Raises ValueError with a readable reason (missing, too large, not UTF-8, invalid).
    """
    p = Path(path).expanduser()
    try:
        if p.stat().st_size > MAX_SIGNATURES_FILE_BYTES:
            raise ValueError(f"{p}: larger than {MAX_SIGNATURES_FILE_BYTES} bytes")
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"cannot read {p}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{p}: not UTF-8 text") from None
    try:
        return text, parse_signatures(text, source=str(p))
    except JectguardError as exc:
        raise ValueError(str(exc)) from None


__all__ = ["DEFAULT_SIGNATURES", "MAX_SIGNATURES_FILE_BYTES", "read_signatures"]
