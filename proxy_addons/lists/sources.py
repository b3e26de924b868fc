"""The sources file (``blocklists/sources.toml``): which lists, from where, how treated."""

from __future__ import annotations

import re
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from proxy_addons.core.errors import SourceConfigError
from proxy_addons.core.formats import FORMATS
from proxy_addons.core.model import ListSpec, Mode

# The folder that holds the package (a checkout): proxy_addons/lists/sources.py -> ../../..
PACKAGE_ROOT: Final = Path(__file__).resolve().parents[2]


def _shipped_lists() -> Path:
    """blocklists/ beside the package (a checkout), else where a wheel installs it."""
    beside = PACKAGE_ROOT / "blocklists"
    if beside.is_dir():
        return beside
    return Path(sys.prefix) / "share" / "jectguard" / "blocklists"


SHIPPED_LISTS: Final = _shipped_lists()
DEFAULT_SOURCES: Final = SHIPPED_LISTS / "sources.toml"
FORMAT_NAMES: Final = ("auto", *FORMATS)
_NAME_RE: Final = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
_DURATION_RE: Final = re.compile(r"(\d+)\s*([smhd])")
_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400}
# Feed operators rate-limit; nobody needs fresher than every 5 minutes.
MIN_REFRESH_SECONDS: Final = 300
# The least time between two fetches of a source (manual ones too) when the sources
# file does not say: the scheduled floor.
DEFAULT_MIN_INTERVAL: Final = MIN_REFRESH_SECONDS
# Floors feed operators publish (docs/feeds.md); a sources file may not go below them.
KNOWN_FEED_FLOORS: Final = {
    "urlhaus.abuse.ch": 300,  # "do not fetch more often than every 5 minutes"
    "urlhaus-api.abuse.ch": 300,
    "feodotracker.abuse.ch": 300,
    "sslbl.abuse.ch": 300,
    "threatfox.abuse.ch": 300,
    "www.spamhaus.org": 3600,  # "DO NOT auto-fetch ... more than once per hour"
    "spamhaus.org": 3600,
    "openphish.com": 3600,  # updated every 12 hours; more is only load on them
    "hole.cert.pl": 300,
}


@dataclass(frozen=True, slots=True)
class FeedRules:
    """How a URL source may be fetched: how often at most, and where it may lead."""

    min_interval: int = DEFAULT_MIN_INTERVAL  # seconds between two fetches, even manual ones
    internal: bool = False  # an internal feed server: its redirects may stay internal


def known_floor(url: str) -> int:
    """The minimum interval a feed's operator asks for (0 when we know none)."""
    from urllib.parse import urlsplit

    host = (urlsplit(url).hostname or "").rstrip(".").lower()
    return KNOWN_FEED_FLOORS.get(host, 0)


def parse_duration(value: object, what: str) -> int:
    """``"90s"``, ``"15m"``, ``"6h"``, ``"1d"`` (or a number of seconds) -> seconds."""
    if isinstance(value, bool):
        raise SourceConfigError(f"{what}: expected a duration, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        m = _DURATION_RE.fullmatch(value.strip())
        if m:
            return int(m.group(1)) * _UNITS[m.group(2)]
    raise SourceConfigError(f"{what}: expected a duration like '15m', '6h' or '1d', got {value!r}")


@dataclass(frozen=True, slots=True)
class SourcesConfig:
    """Everything the sources file says."""

    path: Path | None
    sources: tuple[ListSpec, ...]
    never_block: tuple[str, ...] = ()
    descriptions: dict[str, str] = field(default_factory=dict)
    feed_rules: dict[str, FeedRules] = field(default_factory=dict)  # URL sources

    def enabled(self) -> list[ListSpec]:
        return [s for s in self.sources if s.enabled]

    def rules(self, name: str) -> FeedRules:
        return self.feed_rules.get(name, FeedRules())


def load_sources(path: str | Path | None = None) -> SourcesConfig:
    """Read and validate a sources file; SourceConfigError names the entry and field."""
    path = Path(path) if path is not None else DEFAULT_SOURCES
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SourceConfigError(
            f"{path}: cannot read sources file: {exc.strerror or exc}"
        ) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise SourceConfigError(f"{path}: not valid TOML: {exc}") from None
    return parse_sources(data, base=path.parent, origin=str(path), path=path)


def parse_sources(
    data: dict[str, Any], *, base: Path, origin: str = "sources", path: Path | None = None
) -> SourcesConfig:
    defaults = data.get("defaults", {})
    if not isinstance(defaults, dict):
        raise SourceConfigError(f"{origin}: [defaults] must be a table")
    entries = data.get("source", [])
    if not isinstance(entries, list):
        raise SourceConfigError(f"{origin}: [[source]] entries must be an array of tables")
    specs: list[ListSpec] = []
    descriptions: dict[str, str] = {}
    feed_rules: dict[str, FeedRules] = {}
    seen: set[str] = set()
    for i, entry in enumerate(entries, 1):
        where = f"{origin}: source #{i}"
        if not isinstance(entry, dict):
            raise SourceConfigError(f"{where}: must be a table")
        name = entry.get("name")
        if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
            raise SourceConfigError(f"{where}: name must match [a-z0-9][a-z0-9_-]*, got {name!r}")
        where = f"{origin}: source {name!r}"
        if name in seen:
            raise SourceConfigError(f"{where}: duplicate name")
        seen.add(name)
        url, file = entry.get("url"), entry.get("path")
        if (url is None) == (file is None):
            raise SourceConfigError(f"{where}: give exactly one of 'url' or 'path'")
        if url is not None and (
            not isinstance(url, str) or not url.startswith(("https://", "http://"))
        ):
            raise SourceConfigError(f"{where}: url must be an http(s) URL, got {url!r}")
        if file is not None:
            if not isinstance(file, str) or not file:
                raise SourceConfigError(f"{where}: path must be a string")
            file = str((base / file).resolve()) if not Path(file).is_absolute() else file
        fmt = entry.get("format", "auto")
        if fmt not in FORMAT_NAMES:
            raise SourceConfigError(f"{where}: format must be one of {', '.join(FORMAT_NAMES)}")
        mode = entry.get("mode", defaults.get("mode", "enforce"))
        if mode not in ("enforce", "monitor"):
            raise SourceConfigError(f"{where}: mode must be 'enforce' or 'monitor', got {mode!r}")
        kind = entry.get("kind", "block")
        if kind not in ("block", "allow"):
            raise SourceConfigError(f"{where}: kind must be 'block' or 'allow', got {kind!r}")
        category = entry.get("category", "allow" if kind == "allow" else "malware")
        if not isinstance(category, str) or not category:
            raise SourceConfigError(f"{where}: category must be a non-empty string")
        enabled = entry.get("enabled", True)
        if not isinstance(enabled, bool):
            raise SourceConfigError(f"{where}: enabled must be true or false")
        refresh = parse_duration(
            entry.get("refresh", defaults.get("refresh", "1d")), f"{where}: refresh"
        )
        if url is not None and refresh < MIN_REFRESH_SECONDS:
            raise SourceConfigError(
                f"{where}: refresh under {MIN_REFRESH_SECONDS}s is abusive to feeds"
            )
        if url is not None:
            feed_rules[name] = _feed_rules(entry, defaults, url, refresh, where)
        elif "min_interval" in entry or "internal" in entry:
            raise SourceConfigError(f"{where}: min_interval and internal apply to url sources only")
        specs.append(
            ListSpec(
                name=name,
                path=file,
                url=url,
                format=fmt,
                category=category,
                mode=Mode(mode),
                allow=kind == "allow",
                enabled=enabled,
                refresh=refresh,
            )
        )
        if isinstance(entry.get("description"), str):
            descriptions[name] = entry["description"]
    canaries = data.get("canaries", {})
    never = canaries.get("never_block", []) if isinstance(canaries, dict) else None
    if not isinstance(never, list) or not all(isinstance(h, str) for h in never):
        raise SourceConfigError(f"{origin}: [canaries] never_block must be a list of hosts")
    return SourcesConfig(path, tuple(specs), tuple(never), descriptions, feed_rules)


def _feed_rules(
    entry: dict[str, Any], defaults: dict[str, Any], url: str, refresh: int, where: str
) -> FeedRules:
    floor = known_floor(url)
    raw = entry.get("min_interval", defaults.get("min_interval"))
    if raw is None:
        min_interval = max(DEFAULT_MIN_INTERVAL, floor)
    else:
        min_interval = parse_duration(raw, f"{where}: min_interval")
        if min_interval < floor:
            raise SourceConfigError(
                f"{where}: min_interval under {floor}s, which this feed's operator asks for"
            )
    if refresh < min_interval:
        raise SourceConfigError(
            f"{where}: refresh ({refresh}s) is under its min_interval ({min_interval}s)"
        )
    internal = entry.get("internal", False)
    if not isinstance(internal, bool):
        raise SourceConfigError(f"{where}: internal must be true or false")
    return FeedRules(min_interval=min_interval, internal=internal)
