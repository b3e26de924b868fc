"""Retro-hunt: which hosts already reached are matched by the rules a new snapshot adds.

Pure: two engines and a list of hosts in, matches out. The ledger (hosts only)
supplies the hosts; the addon turns the matches into events.

The rules a snapshot adds are the set difference of the two block indexes'
sorted key hashes (an index keeps hashes, not keys). A host is a candidate when
one of its lookup hashes (the host and its parent domains, its CIDR networks)
is among them, or when an added URL rule names it; a candidate is a hit when
the new block index matches it and the old one did not (a host already listed
was blocked, not reached unseen) and no allow entry covers it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

import xxhash

from .canon import canonical_host, canonicalize_url, host_kind
from .engine import Engine
from .errors import CanonError
from .index import NS_HOST, NS_NET, CompiledIndex, host_probes, net_key
from .model import Match, RuleKind

# Added URL rules whose text is read to learn their host: past this many the rest are
# found through their host's marker alone (a new feed of millions of URLs must not
# make one swap parse millions of texts).
MAX_URL_TEXTS: Final = 200_000


@dataclass(frozen=True, slots=True)
class RetroMatch:
    """A host seen in traffic and the newly added rule that now matches it."""

    host: str
    match: Match


def _in_sorted(table: object, values: object) -> object:
    """A bool array: which of ``values`` occur in the sorted array ``table``.

    Binary search, a gather and a compare: numpy runs each of them with the GIL
    released, so the hunt thread never holds up the proxy's event loop. (``np.isin``
    and ``np.setdiff1d`` go through ``np.unique``, whose hash table holds the GIL for
    the whole pass: ~250 ms at 1.11M rules, every request waiting behind it.)
    """
    import numpy as np

    t = np.asarray(table, dtype=np.uint64)
    v = np.asarray(values, dtype=np.uint64)
    if not len(t):
        return np.zeros(len(v), dtype=bool)
    pos = np.searchsorted(t, v)
    np.minimum(pos, len(t) - 1, out=pos)
    found: object = np.take(t, pos) == v
    return found


def added_hashes(old: CompiledIndex, new: CompiledIndex) -> object:
    """The key hashes ``new`` has and ``old`` lacks, sorted and distinct (a numpy uint64 array).

    Both tables are sorted (the index's contract), so the difference keeps that order
    and only neighbours can repeat.
    """
    import numpy as np

    new_h = np.frombuffer(new.key_hashes, dtype=np.uint64)
    old_h = np.frombuffer(old.key_hashes, dtype=np.uint64)
    fresh = new_h[~np.asarray(_in_sorted(old_h, new_h))]
    if len(fresh) > 1:
        keep = np.empty(len(fresh), dtype=bool)
        keep[0] = True
        np.not_equal(fresh[1:], fresh[:-1], out=keep[1:])
        fresh = fresh[keep]
    return fresh


def _url_rule_hosts(new: CompiledIndex, added: object) -> dict[str, Match]:
    """Host -> an added URL rule on it, read from the rules' texts (URL rules match by path)."""
    import numpy as np

    table = np.frombuffer(new.key_hashes, dtype=np.uint64)
    arr = np.asarray(added, dtype=np.uint64)
    lo = np.searchsorted(table, arr, side="left")
    hi = np.searchsorted(table, arr, side="right")
    out: dict[str, Match] = {}
    seen = 0
    for a, b in zip(lo.tolist(), hi.tolist(), strict=True):
        for pos in range(a, b):
            m = new.record_at(pos)
            if m is None or m.kind is not RuleKind.URL or not m.rule:
                continue
            seen += 1
            if seen > MAX_URL_TEXTS:
                return out
            text = m.rule if "://" in m.rule else "http://" + m.rule
            try:
                host = canonicalize_url(text).host
            except CanonError:
                continue
            out.setdefault(host, m._replace(key=host))
    return out


def _candidate_hashes(host: str, kind: str, v4: tuple[int, ...], v6: tuple[int, ...]) -> list[int]:
    hashes = [h for _, h in host_probes(host, kind)]
    if kind == "ipv4" or kind == "ipv6":
        n = int(ipaddress.ip_address(host))
        version, bits, plens = (4, 32, v4) if kind == "ipv4" else (6, 128, v6)
        full = (1 << bits) - 1
        for plen in plens:
            net = n & (full ^ ((1 << (bits - plen)) - 1))
            hashes.append(xxhash.xxh3_64_intdigest(net_key(net, plen, version), NS_NET))
    return hashes


def retro_matches(old: Engine, new: Engine, hosts: Iterable[str]) -> list[RetroMatch]:
    """The hosts among ``hosts`` that ``new`` newly blocks or monitors, with the rule."""
    import numpy as np

    added = added_hashes(old.block, new.block)
    if not len(added):  # type: ignore[arg-type]
        return []
    url_hosts = _url_rule_hosts(new.block, added)
    v4, v6 = new.block.v4_prefixes, new.block.v6_prefixes
    # Every host's lookup hashes in one array, matched against the added ones in one
    # vectorized pass: a feed that adds millions of rules costs an array, not a set.
    names: list[str] = []
    cand: list[int] = []
    owner: list[int] = []
    for raw in hosts:
        try:
            host = canonical_host(raw)
        except CanonError:
            continue
        kind = host_kind(host)
        hashes = _candidate_hashes(host, kind, v4, v6)
        owner.extend([len(names)] * len(hashes))
        cand.extend(hashes)
        names.append(host)
    if not names:
        return []
    hit = np.asarray(_in_sorted(added, np.array(cand, dtype=np.uint64)))
    candidates = set(np.array(owner, dtype=np.int64)[hit].tolist())
    candidates.update(i for i, h in enumerate(names) if h in url_hosts)
    out: list[RetroMatch] = []
    for i in sorted(candidates):
        host = names[i]
        m = new.block.match_host(host) or url_hosts.get(host)
        if m is None or old.block.match_host(host) is not None:
            continue
        if not new.allow.empty and new.allow.match_host(host) is not None:
            continue
        out.append(RetroMatch(host, m))
    return out


__all__ = ["MAX_URL_TEXTS", "NS_HOST", "RetroMatch", "added_hashes", "retro_matches"]
