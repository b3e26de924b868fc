"""The local ``campaign`` list: hosts the campaign detector flagged in enforce mode.

One JSON file in the cache directory (``campaign/list.json``) holds the hosts
with their evidence and the hosts an operator cleared (with when). The proxy,
``jectguard lists`` and the admin API all change it through :func:`update_list`
(a file lock around read, change, atomic replace), and every proxy process
polls its modification time: a host cleared anywhere is unblocked everywhere,
and its clearance reaches each process's detector (which then does not flag it
again for its window).

The hosts compile into a small block index (:func:`compile_list`, category
``campaign``) that the engine consults after the big one
(``Engine.extra``): a change never rebuilds the feeds' index. The poison guard
applies as to any list: the campaign list can never block a loopback or private
address, or a public suffix.

Pure Python: no mitmproxy, no aiohttp.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from proxy_addons.core.canon import canonical_host
from proxy_addons.core.errors import CanonError, JectguardError
from proxy_addons.core.formats import parse_list
from proxy_addons.core.index import CompiledIndex, compile_index
from proxy_addons.core.model import ListSpec, Mode
from proxy_addons.lists.layout import CacheLayout

LIST_NAME: Final = "campaign"
CATEGORY: Final = "campaign"
SPEC: Final = ListSpec(name=LIST_NAME, format="domains", category=CATEGORY, mode=Mode.ENFORCE)
VERSION: Final = 1
# A campaign list this long is an attack on the detector, not a campaign: the oldest go.
MAX_LISTED: Final = 10_000
# Clearances kept (the detector keeps its own for its window).
MAX_CLEARED: Final = 10_000
# Evidence kept per host, and the longest string of it (the file is shown in a terminal).
MAX_EVIDENCE: Final = 16
MAX_TEXT: Final = 512
MAX_SITES: Final = 64
# A list file larger than this is not read (10 000 hosts with evidence stay far below).
MAX_FILE_BYTES: Final = 32 * 1024 * 1024


class CampaignListError(JectguardError, ValueError):
    """The campaign list file is not one this module wrote."""

    hint = "state"


@dataclass(frozen=True, slots=True)
class CampaignFiles:
    """Where campaign detection keeps its files, under one cache directory."""

    dir: Path

    @classmethod
    def under(cls, cache_dir: Path) -> CampaignFiles:
        return cls(CacheLayout(cache_dir).campaign)

    @property
    def list_path(self) -> Path:
        return self.dir / "list.json"

    @property
    def lock_path(self) -> Path:
        return self.dir / "list.lock"

    @property
    def state_path(self) -> Path:
        """The detector's state (:meth:`CampaignDetector.to_state`), written by its process.

        Proxy processes sharing a cache directory: the first detector to lock it keeps
        it; the others keep theirs in memory (see ``campaign_worker.serve``)."""
        return self.dir / "detector.json"


@dataclass(frozen=True, slots=True)
class Listed:
    """One host on the list and why it is there."""

    host: str
    flagged_at: float
    first_seen: float
    sites: tuple[str, ...]
    pages: int
    score: float
    evidence: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "flagged_at": self.flagged_at,
            "first_seen": self.first_seen,
            "sites": list(self.sites),
            "pages": self.pages,
            "score": self.score,
            "evidence": list(self.evidence),
        }

    @classmethod
    def from_finding(cls, doc: Mapping[str, Any]) -> Listed:
        """From a ``CampaignFinding.as_dict()`` (or a stored entry); ValueError if malformed."""
        try:
            host = canonical_host(str(doc["host"]))
        except (KeyError, CanonError) as exc:
            raise ValueError(f"not a host: {exc}") from None
        sites, evidence = doc.get("sites", []), doc.get("evidence", [])
        if not isinstance(sites, list) or not isinstance(evidence, list):
            raise ValueError(f"{host}: 'sites' and 'evidence' are lists")
        try:
            return cls(
                host=host,
                flagged_at=float(doc["flagged_at"]),
                first_seen=float(doc["first_seen"]),
                sites=tuple(str(s)[:MAX_TEXT] for s in sites[:MAX_SITES]),
                pages=int(doc.get("pages", 0)),
                score=float(doc.get("score", 0.0)),
                evidence=tuple(str(e)[:MAX_TEXT] for e in evidence[:MAX_EVIDENCE]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{host}: {exc}") from None


@dataclass(slots=True)
class CampaignList:
    """The list's content: listed hosts (oldest first) and clearances (host -> when)."""

    hosts: dict[str, Listed] = field(default_factory=dict)
    cleared: dict[str, float] = field(default_factory=dict)

    def add(self, entry: Listed) -> None:
        self.hosts.pop(entry.host, None)
        self.hosts[entry.host] = entry
        while len(self.hosts) > MAX_LISTED:
            del self.hosts[next(iter(self.hosts))]

    def clear(self, host: str, now: float) -> bool:
        """Take ``host`` off (if it is on) and remember the clearance; True if it was listed."""
        was = self.hosts.pop(host, None) is not None
        self.cleared.pop(host, None)
        self.cleared[host] = now
        while len(self.cleared) > MAX_CLEARED:
            del self.cleared[next(iter(self.cleared))]
        return was

    def as_dict(self) -> dict[str, Any]:
        return {
            "version": VERSION,
            "hosts": [e.as_dict() for e in self.hosts.values()],
            "cleared": dict(self.cleared),
        }

    @classmethod
    def from_dict(cls, doc: object) -> CampaignList:
        if not isinstance(doc, dict) or doc.get("version") != VERSION:
            raise CampaignListError("not a campaign list (or another version)")
        hosts, cleared = doc.get("hosts"), doc.get("cleared")
        if not isinstance(hosts, list) or not isinstance(cleared, dict):
            raise CampaignListError("'hosts' must be a list and 'cleared' an object")
        out = cls()
        try:
            for item in hosts[-MAX_LISTED:]:
                if not isinstance(item, dict):
                    raise ValueError("a host entry is an object")
                out.add(Listed.from_finding(item))
            for host, at in list(cleared.items())[-MAX_CLEARED:]:
                out.cleared[canonical_host(str(host))] = float(at)
        except (ValueError, TypeError) as exc:
            raise CampaignListError(str(exc)) from None
        return out


def canonical_campaign_host(text: str) -> str:
    """A host as the list keys it; ValueError (CanonError) for anything else."""
    return canonical_host(text.strip())


def read_list(files: CampaignFiles) -> CampaignList:
    """The list on disk (empty when there is none); CampaignListError when unreadable."""
    try:
        with open(files.list_path, "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        return CampaignList()
    except OSError as exc:
        raise CampaignListError(f"{files.list_path}: {exc.strerror or exc}") from None
    if len(data) > MAX_FILE_BYTES:
        raise CampaignListError(f"{files.list_path}: larger than {MAX_FILE_BYTES} bytes")
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):
        raise CampaignListError(f"{files.list_path}: not JSON") from None
    return CampaignList.from_dict(doc)


def list_version(files: CampaignFiles) -> tuple[int, int, int] | None:
    """Which list file is there (None: none): what processes poll. Every write replaces
    the file, so its inode changes even when the clock's grain hides the change."""
    try:
        st = files.list_path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def write_json_atomic(path: Path, doc: object) -> None:
    """Replace ``path`` with ``doc`` as JSON: readers see the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(doc, f, ensure_ascii=False, separators=(",", ":"))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def _locked(files: CampaignFiles) -> Iterator[None]:
    files.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(files.lock_path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def update_list[T](files: CampaignFiles, change: Callable[[CampaignList], T]) -> T:
    """Read the list, apply ``change``, write it back: under a lock, so proxies, the CLI
    and the API never lose each other's changes. An unreadable list is started afresh
    (it is rebuilt from findings; a damaged file must not stop blocking new ones)."""
    with _locked(files):
        try:
            current = read_list(files)
        except CampaignListError:
            current = CampaignList()
        result = change(current)
        write_json_atomic(files.list_path, current.as_dict())
        return result


def compile_list(lst: CampaignList) -> CompiledIndex | None:
    """The block index of the listed hosts (None when the list is empty)."""
    if not lst.hosts:
        return None
    parsed = parse_list("\n".join(lst.hosts) + "\n", "domains", name=LIST_NAME)
    img, _ = compile_index([(SPEC, parsed)])
    return CompiledIndex(img)


__all__ = [
    "CATEGORY",
    "LIST_NAME",
    "CampaignFiles",
    "CampaignList",
    "CampaignListError",
    "Listed",
    "canonical_campaign_host",
    "compile_list",
    "list_version",
    "read_list",
    "update_list",
    "write_json_atomic",
]
