"""The sightings ledger: who reached which host, and when (hosts only, never paths).

One row per (day, host, client, user): the first and last time and a count. It
is personal data (it says which person's machine visited which site on which
day): kept ``jg_ledger_days`` days, off with ``jg_ledger=false``; see
docs/retrohunt.md.

- :class:`SightingBatch` aggregates sightings in memory on the event loop (a
  dict update per request) with a cap: past it, new keys are dropped and
  counted, so a slow disk never grows the proxy's memory.
- :class:`Ledger` writes a batch with one upsert per row in one transaction
  (called from a thread), prunes old days, and answers the retro-hunt's and
  ``jectguard hunt``'s queries. SQLite in the cache directory (WAL) for one
  machine; PostgreSQL (``postgresql://...``) for replicas that share one.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

from proxy_addons.core.errors import JectguardError
from proxy_addons.lists.layout import LEDGER_FILE, CacheLayout

# Distinct (day, host, client, user) keys held between two flushes. A key is ~200 bytes
# with its list: 100k keys is ~20 MB, about 50k requests/s of new keys at a 2 s interval.
MAX_BATCH_KEYS: Final = 100_000
# Write the batch this often (seconds) or sooner when it holds this many keys.
FLUSH_SECONDS: Final = 2.0
FLUSH_KEYS: Final = 10_000
# Old days are deleted at most this often (seconds).
PRUNE_SECONDS: Final = 3600.0
DEFAULT_DAYS: Final = 30
# SQLite waits this long for another process's write (workers share one file).
SQLITE_BUSY_MS: Final = 5000
# The longest host kept (DNS names are at most 253 characters); longer is cut.
MAX_HOST_CHARS: Final = 255
MAX_USER_CHARS: Final = 128

Key = tuple[str, str, str, str]  # day, host, client, user


class LedgerError(JectguardError):
    """The ledger cannot be opened or written."""

    hint = "runtime"


def day_of(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d")


class SightingBatch:
    """Sightings since the last flush, aggregated per key; bounded (``cap`` keys)."""

    __slots__ = ("cap", "rows", "dropped", "_day", "_day_end")

    def __init__(self, cap: int = MAX_BATCH_KEYS) -> None:
        self.cap = cap
        self.rows: dict[Key, list[float]] = {}  # key -> [first, last, count]
        self.dropped = 0
        self._day = ""
        self._day_end = 0.0

    def add(self, host: str, client: str | None, user: str | None, now: float) -> None:
        """Count one sighting of ``host`` (the event loop's per-request cost: one dict update)."""
        if now >= self._day_end or now < self._day_end - 86_400:
            self._day = day_of(now)
            self._day_end = (now // 86_400 + 1) * 86_400
        key = (self._day, host[:MAX_HOST_CHARS], client or "", (user or "")[:MAX_USER_CHARS])
        row = self.rows.get(key)
        if row is not None:
            row[1] = now
            row[2] += 1
        elif len(self.rows) < self.cap:
            self.rows[key] = [now, now, 1]
        else:
            self.dropped += 1

    def __len__(self) -> int:
        return len(self.rows)

    def restore(self, rows: dict[Key, list[float]]) -> None:
        """Put back rows a failed write took (merged; what does not fit is dropped, counted)."""
        for key, (first, last, count) in rows.items():
            row = self.rows.get(key)
            if row is not None:
                row[0], row[1], row[2] = min(row[0], first), max(row[1], last), row[2] + count
            elif len(self.rows) < self.cap:
                self.rows[key] = [first, last, count]
            else:
                self.dropped += int(count)

    def take(self) -> dict[Key, list[float]]:
        rows, self.rows = self.rows, {}
        return rows


@dataclass(frozen=True, slots=True)
class Sighting:
    """One client's (and user's) visits to one host over the days asked about."""

    host: str
    client: str
    user: str
    first: float
    last: float
    count: int

    def as_dict(self) -> dict[str, object]:
        return {
            "host": self.host,
            "client": self.client or None,
            "user": self.user or None,
            "first": rfc3339(self.first),
            "last": rfc3339(self.last),
            "count": self.count,
        }


@dataclass(frozen=True, slots=True)
class RetroHit:
    """A host reached before a rule listed it, the rule, and who reached it."""

    host: str
    rule: str
    list: str
    category: str
    kind: str
    mode: str
    found_at: float
    sightings: tuple[Sighting, ...]

    def as_dict(self) -> dict[str, object]:
        return {
            "event": "retro-hit",
            "host": self.host,
            "rule": self.rule,
            "list": self.list,
            "category": self.category,
            "kind": self.kind,
            "mode": self.mode,
            "found_at": rfc3339(self.found_at),
            "clients": [s.as_dict() for s in self.sightings],
            "users": sorted({s.user for s in self.sightings if s.user}),
        }


def rfc3339(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


_SCHEMA: Final = (
    """CREATE TABLE IF NOT EXISTS sightings (
        day TEXT NOT NULL, host TEXT NOT NULL, client TEXT NOT NULL, username TEXT NOT NULL,
        first_seen DOUBLE PRECISION NOT NULL, last_seen DOUBLE PRECISION NOT NULL,
        hits BIGINT NOT NULL, PRIMARY KEY (day, host, client, username))""",
    "CREATE INDEX IF NOT EXISTS sightings_host ON sightings (host)",
    """CREATE TABLE IF NOT EXISTS retro_hits (
        host TEXT NOT NULL, list TEXT NOT NULL, rule TEXT NOT NULL, category TEXT NOT NULL,
        kind TEXT NOT NULL, mode TEXT NOT NULL, found_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (host, list, rule))""",
)


class Ledger:
    """The ledger's database: SQLite (a path) or PostgreSQL (a ``postgresql://`` URL).

    Thread-safe (one connection behind a lock): the proxy calls it from worker
    threads, never from the event loop.
    """

    def __init__(self, target: str | Path) -> None:
        self.target = str(target)
        self.postgres = self.target.startswith(("postgresql://", "postgres://"))
        self._lock = threading.Lock()
        self._conn: Any = self._connect()
        p = "%s" if self.postgres else "?"
        lo, hi = ("LEAST", "GREATEST") if self.postgres else ("min", "max")
        self._upsert = (
            "INSERT INTO sightings (day, host, client, username, first_seen, last_seen, hits) "
            f"VALUES ({p}, {p}, {p}, {p}, {p}, {p}, {p}) "
            "ON CONFLICT (day, host, client, username) DO UPDATE SET "
            f"first_seen = {lo}(sightings.first_seen, excluded.first_seen), "
            f"last_seen = {hi}(sightings.last_seen, excluded.last_seen), "
            "hits = sightings.hits + excluded.hits"
        )
        self._p = p
        with self._tx() as cur:
            for stmt in _SCHEMA:
                cur.execute(stmt)

    def _connect(self) -> Any:
        if self.postgres:
            try:
                import psycopg
            except ImportError:
                raise LedgerError("jg_ledger_url: PostgreSQL needs psycopg installed") from None
            try:
                return psycopg.connect(self.target, connect_timeout=10)
            except psycopg.Error as exc:
                raise LedgerError(f"cannot connect to the ledger database: {exc}") from None
        path = Path(self.target)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(
                path, timeout=SQLITE_BUSY_MS / 1000, check_same_thread=False,
                isolation_level=None,
            )  # fmt: skip
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_MS}")
        except (OSError, sqlite3.Error) as exc:
            raise LedgerError(f"cannot open the ledger {path}: {exc}") from None
        with contextlib.suppress(OSError):
            path.chmod(0o600)  # personal data: this user only
        return conn

    @contextlib.contextmanager
    def _tx(self) -> Iterator[Any]:
        """A cursor inside one transaction (committed, or rolled back on error)."""
        with self._lock:
            cur = self._conn.cursor()
            try:
                if not self.postgres:
                    cur.execute("BEGIN IMMEDIATE")
                yield cur
                self._conn.commit() if self.postgres else cur.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(Exception):
                    self._conn.rollback()
                raise
            finally:
                cur.close()

    def _q(self, sql: str) -> str:
        return sql.replace("?", self._p)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # -- writes ---------------------------------------------------------------

    def write(self, rows: dict[Key, list[float]]) -> int:
        """Add a batch of sightings (sorted: concurrent writers lock rows in one order)."""
        if not rows:
            return 0
        params = [(*k, v[0], v[1], int(v[2])) for k, v in sorted(rows.items())]
        with self._tx() as cur:
            cur.executemany(self._upsert, params)
        return len(params)

    def prune(self, days: int, now: float | None = None) -> None:
        """Delete sightings (and hits) older than ``days`` days."""
        now = time.time() if now is None else now
        cutoff = day_of(now - days * 86_400 + 86_400)  # keep today and days-1 before it
        with self._tx() as cur:
            cur.execute(self._q("DELETE FROM sightings WHERE day < ?"), (cutoff,))
            cur.execute(self._q("DELETE FROM retro_hits WHERE found_at < ?"),
                        (now - days * 86_400,))  # fmt: skip

    def record_hits(
        self, hits: Sequence[tuple[str, str, str, str, str, str]], now: float
    ) -> list[int]:
        """Store (host, list, rule, category, kind, mode) hits; the indexes of the new ones."""
        fresh = []
        with self._tx() as cur:
            for i, h in enumerate(hits):
                cur.execute(
                    self._q(
                        "INSERT INTO retro_hits (host, list, rule, category, kind, mode, found_at) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (host, list, rule) DO NOTHING"
                    ),
                    (*h, now),
                )
                if cur.rowcount:
                    fresh.append(i)
        return fresh

    # -- reads ----------------------------------------------------------------

    def hosts(self) -> list[str]:
        """Every host in the ledger (the retro-hunt's candidates)."""
        with self._tx() as cur:
            cur.execute("SELECT DISTINCT host FROM sightings")
            return [r[0] for r in cur.fetchall()]

    def sightings(self, host: str, *, subdomains: bool = False,
                  before: float | None = None) -> list[Sighting]:  # fmt: skip
        """Who reached ``host`` (and its subdomains), per host, client and user."""
        where = "host = ?"
        args: list[object] = [host]
        if subdomains:
            # '.' + host as a suffix; LIKE's wildcards in a host are escaped.
            esc = host.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            where = "(host = ? OR host LIKE ? ESCAPE '\\')"
            args.append("%." + esc)
        if before is not None:
            where += " AND first_seen <= ?"
            args.append(before)
        sql = self._q(
            "SELECT host, client, username, MIN(first_seen), MAX(last_seen), SUM(hits) "
            f"FROM sightings WHERE {where} GROUP BY host, client, username "
            "ORDER BY MIN(first_seen), host, client, username"
        )
        with self._tx() as cur:
            cur.execute(sql, args)
            rows = cur.fetchall()
        return [Sighting(r[0], r[1], r[2], float(r[3]), float(r[4]), int(r[5])) for r in rows]

    def hits(self, since: float) -> list[RetroHit]:
        """The retro-hits found since ``since``, each with who reached the host before."""
        with self._tx() as cur:
            cur.execute(
                self._q(
                    "SELECT host, rule, list, category, kind, mode, found_at FROM retro_hits "
                    "WHERE found_at >= ? ORDER BY found_at, host, list, rule"
                ),
                (since,),
            )
            rows = cur.fetchall()
        return [
            RetroHit(
                r[0],
                r[1],
                r[2],
                r[3],
                r[4],
                r[5],
                float(r[6]),
                tuple(self.sightings(r[0], before=float(r[6]))),
            )  # fmt: skip
            for r in rows
        ]


def ledger_target(url: str, cache_dir: Path) -> str:
    """Where the ledger lives: ``url`` if set, else the SQLite file in ``cache_dir``."""
    return url or str(CacheLayout(cache_dir).ledger)


def since_days(days: float, now: float | None = None) -> float:
    now = time.time() if now is None else now
    return (datetime.fromtimestamp(now, UTC) - timedelta(days=days)).timestamp()


def hit_rows(matches: Iterable[Any]) -> list[tuple[str, str, str, str, str, str]]:
    """RetroMatch values as the ledger's hit rows."""
    return [
        (
            m.host,
            m.match.list,
            m.match.rule,
            m.match.category,
            m.match.kind.label,
            m.match.mode.value,
        )  # fmt: skip
        for m in matches
    ]


__all__ = [
    "DEFAULT_DAYS",
    "FLUSH_KEYS",
    "FLUSH_SECONDS",
    "LEDGER_FILE",
    "MAX_BATCH_KEYS",
    "Ledger",
    "LedgerError",
    "RetroHit",
    "Sighting",
    "SightingBatch",
    "day_of",
    "hit_rows",
    "ledger_target",
    "since_days",
]
