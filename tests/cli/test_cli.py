"""The real ``jectguard`` command: check and inspect, as a user runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

JECTGUARD = Path(sys.executable).with_name("jectguard")
CHECK_KEYS = {"url", "canonical_url", "host", "verdict", "list", "rule", "line", "kind", "error"}
INSPECT_KEYS = {
    "format",
    "domains",
    "exact_hosts",
    "urls",
    "ips",
    "cidrs",
    "exceptions",
    "rejected",
}


def run(
    *args: str, stdin: str | None = None, cache: Path | None = None
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if cache is not None:
        env["JECTGUARD_CACHE_DIR"] = str(cache)
    return subprocess.run(
        [str(JECTGUARD), *args], input=stdin, capture_output=True, text=True, timeout=60, env=env
    )


@pytest.fixture
def lists(tmp_path: Path) -> tuple[Path, Path]:
    block = tmp_path / "block.txt"
    block.write_text(
        "# a hosts-format feed\r\n"
        "127.0.0.1 localhost\r\n"
        "0.0.0.0 evil.example\r\n"
        "0.0.0.0 Tracker.Example.  # trailing dot, uppercase\r\n"
        "0.0.0.0 bücher.example\r\n"
        "0.0.0.0 203.0.113.9\r\n",
        encoding="utf-8-sig",
    )
    allow = tmp_path / "allow.txt"
    allow.write_text("good.evil.example\n")
    return block, allow


def test_the_command_is_installed() -> None:
    assert JECTGUARD.exists(), "pip install -e . must put the jectguard script beside python"


def test_check_builtin_blocks_download_ject_in_every_numeric_form(tmp_path: Path) -> None:
    forms = [
        "http://217.107.218.147/dot.php",
        "http://3647724179/dot.php",
        "http://0xd9.0x6b.0xda.0x93/dot.php",
        "http://0331.0153.0332.0223/dot.php",
        "http://217.107.55955/dot.php",
        "http://user@217.107.218.147./dot.php#x",
    ]
    res = run("check", "--json", *forms, cache=tmp_path)
    assert res.returncode == 1, res.stderr
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    assert len(rows) == len(forms)
    for row in rows:
        assert set(row) >= CHECK_KEYS
        assert row["verdict"] == "block"
        assert row["host"] == "217.107.218.147"
        assert row["canonical_url"] == "http://217.107.218.147/dot.php"
        assert row["list"] == "builtin" and row["kind"] == "ip" and isinstance(row["line"], int)
        assert row["error"] is None


def test_check_clean_url_exits_zero(tmp_path: Path) -> None:
    res = run("check", "http://www.example.org/", cache=tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("pass")


def test_check_with_files_allowlist_wins(lists: tuple[Path, Path]) -> None:
    block, allow = lists
    urls = [
        "http://a.evil.example/x",
        "http://good.evil.example/",
        "http://TRACKER.example/",
        "http://xn--bcher-kva.example/",
        "http://203.0.113.9/",
        "http://localhost/",
    ]
    res = run("check", "--json", "--blocklist", str(block), "--allowlist", str(allow), *urls)
    rows = {r["url"]: r for r in map(json.loads, res.stdout.splitlines())}
    assert rows[urls[0]]["verdict"] == "block"
    assert (rows[urls[0]]["list"], rows[urls[0]]["line"], rows[urls[0]]["kind"]) == (
        "block.txt",
        3,
        "domain",
    )
    assert rows[urls[1]]["verdict"] == "allow" and rows[urls[1]]["list"] == "allow.txt"
    assert rows[urls[1]]["overridden"]["rule"] == "evil.example"
    assert rows[urls[2]]["verdict"] == "block" and rows[urls[2]]["line"] == 4
    assert rows[urls[3]]["verdict"] == "block" and rows[urls[3]]["line"] == 5
    assert rows[urls[4]]["verdict"] == "block" and rows[urls[4]]["kind"] == "ip"
    assert rows[urls[5]]["verdict"] == "pass"


def test_check_reads_urls_from_stdin(lists: tuple[Path, Path]) -> None:
    block, _ = lists
    res = run(
        "check",
        "--json",
        "--blocklist",
        str(block),
        stdin="http://evil.example/\nhttp://ok.example/\n",
    )
    assert [json.loads(x)["verdict"] for x in res.stdout.splitlines()] == ["block", "pass"]


def test_check_unparseable_url_reports_an_error(tmp_path: Path) -> None:
    res = run("check", "--json", "http://[::1", "javascript:alert(1)", cache=tmp_path)
    assert res.returncode == 2
    for row in map(json.loads, res.stdout.splitlines()):
        assert row["verdict"] == "error" and row["error"]
        assert row["canonical_url"] is None


@pytest.mark.parametrize("flag", ["--blocklist", "--allowlist"])
def test_missing_list_file_is_a_clear_error(tmp_path: Path, flag: str) -> None:
    res = run("check", flag, str(tmp_path / "nope.txt"), "http://x.example/")
    assert res.returncode == 2
    assert "nope.txt" in res.stderr and "no such file" in res.stderr
    assert res.stdout == ""


def test_binary_list_is_refused(tmp_path: Path) -> None:
    blob = tmp_path / "blob.bin"
    blob.write_bytes(bytes(range(256)) * 64)
    for args in (("inspect", str(blob)), ("check", "--blocklist", str(blob), "http://x.example/")):
        res = run(*args)
        assert res.returncode == 2, res
        assert "blob.bin" in res.stderr or "binary" in res.stderr


def test_inspect_json(lists: tuple[Path, Path]) -> None:
    block, _ = lists
    res = run("inspect", "--json", str(block))
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert set(doc) >= INSPECT_KEYS
    assert doc["format"] == "hosts"
    assert doc["domains"] == ["evil.example", "tracker.example", "xn--bcher-kva.example"]
    assert doc["ips"] == ["203.0.113.9"]
    assert doc["urls"] == [] and doc["cidrs"] == [] and doc["exact_hosts"] == []


def test_inspect_counts_rejected_lines(tmp_path: Path) -> None:
    f = tmp_path / "mixed.txt"
    f.write_text("".join(f"bad{i}.example\n" for i in range(20)) + "106\nexa mple.com\n")
    doc = json.loads(run("inspect", "--json", "--format", "domains", str(f)).stdout)
    assert len(doc["domains"]) == 20
    reasons = {r["line"]: r["reason"] for r in doc["rejected"]}
    assert set(reasons) == {21, 22}
    assert all(r["text"] for r in doc["rejected"])


def test_help_lists_the_commands() -> None:
    res = run("--help")
    assert res.returncode == 0
    for cmd in ("check", "inspect"):
        assert cmd in res.stdout


# -- the settings file ---------------------------------------------------------


def test_settings_file_gives_defaults_and_flags_win(
    tmp_path: Path, lists: tuple[Path, Path]
) -> None:
    block, _ = lists
    cfg = tmp_path / "jectguard.toml"
    cfg.write_text(
        f'cache_dir = "{tmp_path / "cache"}"\n[check]\njson = true\nblocklist = ["{block}"]\n'
    )
    res = run("--config", str(cfg), "check", "http://evil.example/")
    row = json.loads(res.stdout)  # json came from the file
    assert row["verdict"] == "block" and row["list"] == "block.txt"
    other = tmp_path / "other.txt"
    other.write_text("other.example\n")
    res = run("--config", str(cfg), "check", "--blocklist", str(other), "http://evil.example/")
    # an append flag on the command line adds to the file's list
    assert json.loads(res.stdout)["verdict"] == "block"


def test_settings_file_from_the_environment(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[check]\njson = true\n")
    env_run = subprocess.run(
        [str(JECTGUARD), "check", "http://www.example.org/"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "JECTGUARD_CONFIG": str(cfg), "JECTGUARD_CACHE_DIR": str(tmp_path)},
    )
    assert json.loads(env_run.stdout)["verdict"] == "pass"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[run]\nlisten_prot = 1\n", "has no setting 'listen_prot'"),
        ("[runn]\n", "is not a jectguard command"),
        ("colour = 1\n", "unknown top-level setting"),
        ("[run\n", "not valid TOML"),
        ("[run]\nset = 3\n", "must be a table"),
    ],
)
def test_bad_settings_file_is_a_clear_error(tmp_path: Path, text: str, message: str) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    res = run("--config", str(cfg), "check", "http://x.example/")
    assert res.returncode == 2
    assert message in res.stderr and "bad.toml" in res.stderr


def test_settings_file_run_section_parses_into_run_options(tmp_path: Path) -> None:
    from proxy_addons.cli import apply_config, build_parser

    cfg = tmp_path / "run.toml"
    cfg.write_text(
        '[run]\nlisten_host = "0.0.0.0"\nallow_clients = ["10.0.0.0/8"]\nadmin_port = 0\n'
        '[run.set]\nproxyauth = "@/etc/htpasswd"\nssl_insecure = true\n'
    )
    parser = build_parser()
    apply_config(parser, cfg)
    args = parser.parse_args(["run", "--listen-port", "3128", "--set", "ssl_insecure=false"])
    assert (args.listen_host, args.listen_port, args.admin_port) == ("0.0.0.0", 3128, 0)
    assert args.allow_clients == ["10.0.0.0/8"]
    # file options first, command-line ones after (the last one wins in mitmproxy)
    assert args.setoptions == [
        "proxyauth=@/etc/htpasswd",
        "ssl_insecure=true",
        "ssl_insecure=false",
    ]


def test_a_missing_command_module_is_an_error_not_a_missing_command(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A broken install (a command module not shipped) must fail loudly, not drop the
    # command from --help so that `jectguard update` is "invalid choice".
    from proxy_addons import cli

    monkeypatch.setitem(sys.modules, "proxy_addons.cli.hunt", None)
    with pytest.raises(ImportError):
        cli.build_parser()


@pytest.mark.parametrize("how", ["settings file", "flag", "environment"])
def test_a_tilde_cache_dir_names_the_same_directory_everywhere(tmp_path: Path, how: str) -> None:
    # The proxy expands ~ in jg_cache_dir; a command given the same text must write the
    # same directory, not a folder literally named "~" under its working directory.
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "JECTGUARD_CACHE_DIR"}
    env["HOME"] = str(home)
    args = ["lists", "--clear-campaign", "evil.example"]
    if how == "settings file":
        (tmp_path / "c.toml").write_text('cache_dir = "~/jgc"\n')
        args = ["--config", str(tmp_path / "c.toml"), *args]
    elif how == "flag":
        args = [*args, "--cache-dir", "~/jgc"]  # as a script or a unit file passes it
    else:
        env["JECTGUARD_CACHE_DIR"] = "~/jgc"
    res = subprocess.run(
        [str(JECTGUARD), *args], capture_output=True, text=True, timeout=60, env=env, cwd=work
    )
    assert res.returncode == 0, res.stderr
    assert (home / "jgc" / "campaign").is_dir()
    assert not (work / "~").exists()


def test_run_with_a_missing_admin_token_file_says_so_without_a_traceback(tmp_path: Path) -> None:
    """A bad option is one clear line and exit 2, not a RecursionError traceback first."""
    r = run(
        "run",
        "--listen-port",
        "1",
        "--admin-token-file",
        str(tmp_path / "missing-token"),
        cache=tmp_path / "cache",
    )
    assert r.returncode == 2, r.stderr[-2000:]
    out = r.stdout + r.stderr
    assert "missing-token" in out and "no such file" in out
    assert "Traceback" not in out and "RecursionError" not in out


def _campaign_cache(tmp_path: Path, host: str) -> Path:
    """A cache whose campaign list (as the proxy's detector writes it) lists ``host``."""
    from proxy_addons.lists.campaign import CampaignFiles, Listed, update_list

    cache = tmp_path / "cache"
    entry = Listed(host, 1.0e9, 1.0e9, ("a.example", "b.example", "c.example"), 3, 9.0, ("x",))
    update_list(CampaignFiles.under(cache), lambda lst: lst.add(entry))
    return cache


def test_check_decides_with_the_campaign_list_the_proxy_enforces(tmp_path: Path) -> None:
    # A proxy with jg_campaign on (the default) blocks a host on this cache's campaign
    # list: check, on the same cache, must say so (and which list).
    cache = _campaign_cache(tmp_path, "inject-cdn.example")
    r = run("check", "--json", "--cache-dir", str(cache), "http://inject-cdn.example/x.js")
    assert r.returncode == 1, r.stderr
    doc = json.loads(r.stdout)
    assert doc["verdict"] == "block" and doc["list"] == "campaign"
    r = run("check", "--json", "--cache-dir", str(cache), "http://sub.inject-cdn.example/")
    assert json.loads(r.stdout)["verdict"] == "block"
    # With lists named on the command line too: `jectguard run --blocklist` enforces it.
    other = tmp_path / "other.txt"
    other.write_text("unrelated.example\n")
    r = run(
        "check",
        "--json",
        "--cache-dir",
        str(cache),
        "--blocklist",
        str(other),
        "http://inject-cdn.example/x.js",
    )
    assert json.loads(r.stdout)["list"] == "campaign"
    # What the other lists alone decide.
    r = run("check", "--no-campaign", "--cache-dir", str(cache), "http://inject-cdn.example/")
    assert r.returncode == 0, r.stdout


def test_check_with_a_damaged_campaign_list_says_so_and_still_answers(tmp_path: Path) -> None:
    from proxy_addons.lists.campaign import CampaignFiles

    cache = tmp_path / "cache"
    path = CampaignFiles.under(cache).list_path
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    r = run("check", "--cache-dir", str(cache), "http://www.example.com/")
    assert "campaign list" in r.stderr and "not JSON" in r.stderr
    assert "Traceback" not in r.stderr
    # Not a confident "passes": the proxy may still block it from the list it read last.
    assert r.returncode == 2
    r = run("check", "--json", "--cache-dir", str(cache), "http://217.107.218.147/")
    assert r.returncode == 1  # the shipped lists still decide
    assert json.loads(r.stdout)["verdict"] == "block"


def test_check_takes_the_proxys_nat64_prefixes(tmp_path: Path) -> None:
    block = tmp_path / "nets.txt"
    block.write_text("192.0.2.0/24\n")
    url = "http://[2001:db8:64::c000:207]/"  # 192.0.2.7 behind this network's NAT64
    r = run("check", "--json", "--blocklist", str(block), url)
    assert json.loads(r.stdout)["verdict"] == "pass"
    r = run("check", "--json", "--blocklist", str(block), "--nat64-prefix", "2001:db8:64::/96", url)
    assert r.returncode == 1 and json.loads(r.stdout)["verdict"] == "block"
    # The well-known prefix needs no option, in check as in the proxy.
    r = run("check", "--json", "--blocklist", str(block), "http://[64:ff9b::c000:207]/")
    assert json.loads(r.stdout)["verdict"] == "block"
    r = run("check", "--blocklist", str(block), "--nat64-prefix", "2001:db8::/95", url)
    assert r.returncode == 2 and "--nat64-prefix" in r.stderr and "Traceback" not in r.stderr
