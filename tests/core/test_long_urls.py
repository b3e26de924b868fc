"""Pages that name very long hosts and URLs: bounded memory, and nothing slips through.

A red team showed a 60 KB name (30,000 labels) made the scanner build every parent
domain (~900 MB of strings) and fail the page; each such name seen was also remembered.
The scan now runs here under an address-space limit far below that, in a process of
its own, and must still strip what it strips.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import textwrap
from pathlib import Path

from proxy_addons.core.canon import MAX_URL_LENGTH

# Far below what the old code needed (the interpreter, ada and the scanner use ~300 MB
# of address space here), far above what the scan needs now.
ADDRESS_SPACE = 1024**3

SCAN = textwrap.dedent(
    """
    import json, sys
    from proxy_addons.core.engine import Engine, blocked_by
    from proxy_addons.core.formats import parse_list
    from proxy_addons.core.htmlscan import Scanner
    from proxy_addons.core.model import ListSpec

    lists = [(ListSpec(name="bl", category="malware"), parse_list("evil.test\\n", name="bl"))]
    engine, _, _ = Engine.from_lists(lists)
    scanner = Scanner(blocked_by(engine))
    page = open(sys.argv[1], "rb").read()
    out, findings = scanner.strip(page, "https://page.test/", "text/html; charset=utf-8")
    print(json.dumps([[f.url and f.url[:60], f.rule, f.list, f.removed] for f in findings]))
    """
)


def scan_limited(page: bytes, tmp: Path) -> list[list[object]]:
    path = tmp / "page.html"
    path.write_bytes(page)

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))

    proc = subprocess.run(
        [sys.executable, "-c", SCAN, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=limit,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    found: list[list[object]] = json.loads(proc.stdout)
    return found


def test_long_names_cost_bounded_memory_and_the_listed_script_is_stripped(tmp_path: Path) -> None:
    long_name = "a." * 30_000 + "test"  # under the URL cap: checked, not listed
    long_listed = "b." * 30_000 + "evil.test"  # a parent is listed
    page = (
        b"<!doctype html><html><head>"
        + f'<script src="https://{long_name}/x.js"></script>'.encode()
        + f'<script src="https://{long_listed}/x.js"></script>'.encode()
        + b'<script src="https://evil.test/x.js"></script>'
        + f"<script>var u = 'https://{long_name}/y.js';</script>".encode()
        + b"</head><body>ok</body></html>"
    )
    found = scan_limited(page, tmp_path)
    removed = [(str(u)[:16], rule) for u, rule, _, gone in found if gone]
    assert ("https://b.b.b.b.", "evil.test") in removed
    assert ("https://evil.tes", "evil.test") in removed
    assert len(removed) == 2, found


def test_a_script_too_long_to_check_goes_a_data_script_stays(tmp_path: Path) -> None:
    """The proxy would refuse the request (an error never passes): the element goes too."""
    too_long = "https://clean.test/app.js?" + "v" * MAX_URL_LENGTH
    data = "data:text/javascript;base64," + "QUFB" * (MAX_URL_LENGTH // 4)
    page = (
        f'<!doctype html><script src="{too_long}"></script><script src="{data}"></script><p>ok</p>'
    ).encode()
    found = scan_limited(page, tmp_path)
    assert [(u and str(u)[:18], lst, gone) for u, _, lst, gone in found] == [
        ("https://clean.test", "jectguard", True)
    ]


def test_what_the_scanner_remembers_is_bounded_in_bytes() -> None:
    """A page chooses its URLs: 20,000 remembered 60 KB URLs would be over a GB, kept
    across pages (in the proxy itself for small pages). Keys too long are not kept, and
    each cache holds at most _CACHE_KEY_CHARS of keys."""
    from proxy_addons.core import htmlscan
    from proxy_addons.core.engine import Engine, blocked_by
    from proxy_addons.core.formats import parse_list
    from proxy_addons.core.model import ListSpec

    lists = [(ListSpec(name="bl", category="malware"), parse_list("evil.test\n", name="bl"))]
    engine, _, _ = Engine.from_lists(lists)
    scanner = htmlscan.Scanner(blocked_by(engine))
    pad = "p" * 60_000
    for i in range(3):
        page = "".join(
            f'<script src="https://c{i}-{j}.test/{pad}"></script>' for j in range(20)
        ).encode()
        scanner.scan(page, f"https://page.test/{i}", "text/html")
    caches = scanner._caches
    assert all(len(k) < 60_000 for k in caches.verdicts)
    assert all(len(b) + len(r) < 60_000 for b, r in caches.joins)
    mid = "q" * 9_000  # kept, until the cache holds its budget of key bytes
    n = htmlscan._CACHE_KEY_CHARS // 9_000 + 50
    for j in range(n):
        caches.put(caches.verdicts, f"https://k{j}.test/{mid}", None)
    held = sum(len(k) for k in caches.verdicts)
    assert 0 < held <= htmlscan._CACHE_KEY_CHARS and len(caches.verdicts) < n


def test_a_long_url_named_many_times_is_checked_once_a_scan() -> None:
    """Too long to remember across scans, but a page repeating it is not judged anew
    for each occurrence (1,000 x 30 KB checks would take seconds of a worker; 200 here: 6 MB)."""
    from proxy_addons.core.htmlscan import Scanner

    asked: list[str] = []

    def is_blocked(url: str) -> None:
        asked.append(url)
        return None

    url = "https://clean.test/" + "p" * 30_000
    page = ("<script>var u = ['" + "', '".join([url] * 200) + "'];</script>").encode()
    scanner = Scanner(is_blocked)
    assert scanner.scan(page, "https://page.test/", "text/html") == []
    assert asked.count(url) == 1
    scanner.scan(page, "https://page.test/", "text/html")
    assert asked.count(url) == 2  # not kept across scans (memory), asked again
