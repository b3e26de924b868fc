"""The deployment files, checked without a Docker engine.

- ``docker-compose.yml``: YAML, the compose-spec JSON schema (Debian's
  docker-compose ships a copy), ``docker-compose config`` where that tool is
  installed, and the shape docs/deploy.md promises: ports on loopback, volumes,
  profiles, health checks on the admin port, the admin token never inline.
- ``Dockerfile``: its instructions, and its CMD through jectguard's own parser.
- The scale-out shape as plain processes on loopback: a refresher and two
  watching proxies run the compose services' own command lines (paths and
  ports swapped), HAProxy runs ``haproxy/haproxy.cfg`` (bind address and
  servers swapped). A snapshot published once is served by both replicas,
  directly and through HAProxy, and only the refresher fetches the feed.

The refusal to start as an open proxy is tested on the real process in
tests/e2e/test_proxy.py::test_refuses_open_proxy_on_non_loopback; here only the
deployed command lines are checked against the same rule.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import http.client
import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from proxy_addons.cli import build_parser
from proxy_addons.cli.run import exposure_problem, plan_listeners
from tests.feedserver import FeedServer
from tests.ports import free_port

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
HAPROXY_CFG = ROOT / "haproxy" / "haproxy.cfg"
# The compose-spec schema: a vendored copy if one is ever added, else the one
# Debian's docker-compose package installs.
SCHEMA_CANDIDATES = (
    Path(__file__).parent / "data" / "compose-spec.json",
    Path("/usr/lib/python3/dist-packages/compose/config/compose_spec.json"),
)

# What docs/deploy.md promises about the containers.
PROXY_PORT = 8080
ADMIN_PORT = 8090
CACHE_DIR = "/data/cache"
CONFDIR = "/data/mitmproxy"
JECTGUARD_SERVICES = ("jectguard", "refresher", "proxy")
TOKEN_ENV = "JECTGUARD_ADMIN_TOKEN"

# Bounds of the process test: start-up, one refresh cycle (the refresher polls
# local lists every 5 s, watchers the snapshot pointer every 2 s), shutdown.
START_TIMEOUT = 30.0
PROPAGATE_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
# The test's own clients: loopback (allowed), but not the load balancer's address.
DIRECT_SOURCE = "127.0.0.2"


# -- reading the files ------------------------------------------------------------


def load_compose() -> dict[str, Any]:
    from ruamel.yaml import YAML

    data = YAML(typ="safe", pure=True).load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


@dataclass(frozen=True)
class Instruction:
    keyword: str
    value: str
    line: int


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions with continuation lines joined and comments dropped, as Docker reads them."""
    out: list[Instruction] = []
    buf, start = "", 0
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.rstrip()
        stripped = line.lstrip()
        if not stripped or stripped.startswith("#"):
            continue  # also inside a continuation: Docker drops those lines
        if not buf:
            start = n
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        keyword, _, value = buf.strip().partition(" ")
        out.append(Instruction(keyword.upper(), value.strip(), start))
        buf = ""
    assert not buf, "the Dockerfile ends inside a continuation line"
    return out


def exec_form(value: str) -> list[str]:
    """The JSON (exec) form of CMD/ENTRYPOINT/HEALTHCHECK CMD; fails on the shell form."""
    try:
        argv = json.loads(value)
    except json.JSONDecodeError as exc:
        pytest.fail(f"not the JSON exec form: {value!r} ({exc})")
    assert isinstance(argv, list) and argv and all(isinstance(a, str) for a in argv)
    return argv


@functools.cache
def dockerfile() -> tuple[Instruction, ...]:
    return tuple(parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8")))


def instructions(keyword: str) -> list[Instruction]:
    return [i for i in dockerfile() if i.keyword == keyword]


def image_cmd() -> list[str]:
    (cmd,) = instructions("CMD")
    return exec_form(cmd.value)


def service_argv(name: str, compose: dict[str, Any] | None = None) -> list[str]:
    """The arguments ``jectguard`` gets in this service: its command, else the image's CMD."""
    svc = (compose or load_compose())["services"][name]
    command = svc.get("command")
    if command is None:
        return image_cmd()
    assert isinstance(command, list), f"{name}: write the command as a list (no shell parsing)"
    return [str(a) for a in command]


def parse_run(argv: list[str]) -> argparse.Namespace:
    """Parse with the real ``jectguard`` parser; a usage error fails the test with its message."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        pytest.fail(f"jectguard rejects {argv}: exit {exc.code}")
    assert args.command == "run"
    return args


def set_options(args: argparse.Namespace) -> dict[str, str]:
    out = {}
    for spec in args.setoptions:
        name, sep, value = spec.partition("=")
        assert sep, f"--set {spec!r} has no '='"
        out[name.strip()] = value.strip()
    return out


class _OptionNames:
    """A stand-in for mitmproxy's Loader that only records option names."""

    def __init__(self) -> None:
        self.names: set[str] = set()

    def add_option(self, name: str, *args: Any, **kwargs: Any) -> None:
        self.names.add(name)

    def add_command(self, *args: Any, **kwargs: Any) -> None:
        pass


@functools.cache
def run_option_names() -> frozenset[str]:
    """Every option ``jectguard run`` knows: mitmproxy's, its default addons' and ours."""
    from mitmproxy.addons import default_addons
    from mitmproxy.options import Options

    from proxy_addons.addons import EngineHolder, make_addons
    from proxy_addons.core.engine import Engine

    engine, *_ = Engine.from_lists([])
    loader = _OptionNames()
    for addon in [*default_addons(), *make_addons(EngineHolder(engine))]:
        load = getattr(addon, "load", None)
        if load is not None:
            load(loader)
    return frozenset(set(Options().keys()) | loader.names)


def healthcheck_url(test: list[str]) -> tuple[int, str]:
    """(port, path) of the loopback URL a healthcheck command fetches."""
    m = re.search(r"http://127\.0\.0\.1:(\d+)(/[^'\"\s]*)", " ".join(test))
    assert m, f"no loopback URL in the healthcheck {test}"
    return int(m.group(1)), m.group(2)


def published(port_spec: str) -> tuple[str, int, int]:
    """'127.0.0.1:8080:8080' -> (host_ip, host_port, container_port)."""
    parts = str(port_spec).split("/")[0].split(":")
    assert len(parts) == 3, f"publish {port_spec!r} with an explicit host address"
    return parts[0], int(parts[1]), int(parts[2])


def mounts(svc: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """container path -> (source, mode) of a service's short-syntax volumes."""
    out = {}
    for spec in svc.get("volumes", []):
        source, target, *mode = str(spec).split(":")
        out[target] = (source, mode[0] if mode else "rw")
    return out


# -- compose ----------------------------------------------------------------------


def test_compose_services_and_profiles() -> None:
    compose = load_compose()
    services = compose["services"]
    assert set(services) == {"jectguard", "refresher", "proxy", "haproxy", "ledger-db"}
    assert services["jectguard"]["profiles"] == ["home"]
    for name in ("refresher", "proxy", "haproxy", "ledger-db"):
        assert services[name]["profiles"] == ["scale"], name
    assert "version" not in compose  # obsolete in the compose spec


def test_compose_schema() -> None:
    jsonschema = pytest.importorskip(
        "jsonschema", reason="jsonschema is not installed (add it to the test dependency group)"
    )
    schema_path = next((p for p in SCHEMA_CANDIDATES if p.is_file()), None)
    if schema_path is None:
        pytest.skip("no compose-spec schema here (Debian package docker-compose ships one)")
    schema = json.loads(schema_path.read_text(encoding="utf-8"))
    validator = jsonschema.Draft7Validator(schema)
    errors = sorted(validator.iter_errors(load_compose()), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)


@pytest.mark.parametrize("profile", ["home", "scale"])
def test_docker_compose_config(profile: str, tmp_path: Path) -> None:
    """Debian's docker-compose validates and resolves the file without a Docker engine."""
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.skip("docker-compose is not installed (Debian package docker-compose)")
    # A system program: none of this interpreter's or the user's Docker settings.
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DOCKER_", "COMPOSE_", "PYTHON", "VIRTUAL_ENV", "JECTGUARD_"))
    }
    r = subprocess.run(
        [
            exe,
            "--project-directory",
            str(ROOT),
            "-f",
            str(COMPOSE_FILE),
            "--profile",
            profile,
            "config",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    from ruamel.yaml import YAML

    resolved = YAML(typ="safe", pure=True).load(r.stdout)
    assert resolved["services"]["proxy"]["deploy"]["replicas"] >= 2


@pytest.mark.parametrize("source", [*JECTGUARD_SERVICES, "Dockerfile CMD"])
def test_command_lines_parse_with_the_real_cli(source: str) -> None:
    argv = image_cmd() if source == "Dockerfile CMD" else service_argv(source)
    args = parse_run(argv)
    sets = set_options(args)
    # Paths agree with the volumes and the image.
    assert args.confdir == CONFDIR
    assert args.cache_dir == CACHE_DIR
    assert args.sources and args.sources.startswith("/app/blocklists/")
    assert args.refresh_role in ("refresh", "watch"), "name the role: no reliance on defaults"
    assert args.admin_port == ADMIN_PORT
    assert args.admin_host == "0.0.0.0"  # published on the host's loopback by compose
    if sets.get("server") != "false":
        assert args.listen_port == PROXY_PORT
    unknown = set(sets) - run_option_names()
    assert not unknown, f"jectguard run has no option(s) {sorted(unknown)}"


@pytest.mark.parametrize("source", [*JECTGUARD_SERVICES, "Dockerfile CMD"])
def test_never_an_open_proxy(source: str) -> None:
    """Each listening command names private client networks, and would be refused without them."""
    args = parse_run(image_cmd() if source == "Dockerfile CMD" else service_argv(source))
    if set_options(args).get("server") == "false":
        assert args.listen_host == "127.0.0.1"  # and nothing listens at all
        return
    assert args.listen_host == "0.0.0.0"
    assert args.allow_clients, "a non-loopback listen needs --allow-clients"
    for spec in args.allow_clients:
        net = ipaddress.ip_network(spec)
        assert net.is_private and not net.is_global, f"{spec} is not a private network"
    listeners = plan_listeners(["regular"], args.listen_host, args.listen_port)
    assert exposure_problem(listeners, "", args.allow_clients) is None
    assert exposure_problem(listeners, "", []) is not None


def test_roles_one_refresher_per_deployment() -> None:
    compose = load_compose()
    roles = {
        name: parse_run(service_argv(name, compose)).refresh_role for name in JECTGUARD_SERVICES
    }
    assert roles == {"jectguard": "refresh", "refresher": "refresh", "proxy": "watch"}
    refresher = set_options(parse_run(service_argv("refresher", compose)))
    assert refresher.get("server") == "false", "the refresher must not take proxy traffic"


def test_ports_on_loopback_as_documented() -> None:
    services = load_compose()["services"]
    expected = {
        "jectguard": {PROXY_PORT, ADMIN_PORT},
        "refresher": {ADMIN_PORT},
        "haproxy": {PROXY_PORT},
        "proxy": set(),  # replicas are reached through HAProxy only
    }
    for name, ports in expected.items():
        seen = set()
        for spec in services[name].get("ports", []):
            host_ip, host_port, container_port = published(spec)
            assert host_ip == "127.0.0.1", f"{name}: {spec} must be bound to 127.0.0.1"
            assert host_port == container_port
            seen.add(container_port)
        assert seen == ports, name
    assert {int(p) for p in services["proxy"]["expose"]} == {PROXY_PORT, ADMIN_PORT}
    # HAProxy listens where its service publishes.
    (bind,) = re.findall(r"^\s*bind\s+:(\d+)\s*$", HAPROXY_CFG.read_text(), re.M)
    assert int(bind) == PROXY_PORT


def test_volumes_declared_and_shared_read_only() -> None:
    compose = load_compose()
    declared = set(compose["volumes"])
    assert declared == {"jectguard-cache", "jectguard-ca", "jectguard-ledger"}
    services = compose["services"]
    want_mode = {"jectguard": "rw", "refresher": "rw", "proxy": "ro"}
    for name, mode in want_mode.items():
        m = mounts(services[name])
        assert m[CACHE_DIR] == ("jectguard-cache", mode), name
        assert m[CONFDIR] == ("jectguard-ca", mode), name
    for svc in services.values():
        for source, _ in mounts(svc).values():
            assert source.startswith("./") or source in declared, f"undeclared volume {source}"
    (volume,) = instructions("VOLUME")
    assert set(exec_form(volume.value)) == {CACHE_DIR, CONFDIR}


def test_healthchecks_hit_the_admin_port() -> None:
    services = load_compose()["services"]
    for name in JECTGUARD_SERVICES:
        args = parse_run(service_argv(name))
        test = services[name]["healthcheck"]["test"]
        assert test[0] == "CMD"
        assert healthcheck_url(test) == (args.admin_port, "/healthz"), name
    (hc,) = instructions("HEALTHCHECK")
    options, _, cmd = hc.value.partition("CMD ")
    assert "--interval=" in options
    assert healthcheck_url(exec_form(cmd)) == (parse_run(image_cmd()).admin_port, "/healthz")


def test_admin_token_never_inline() -> None:
    for name, svc in load_compose()["services"].items():
        env = svc.get("environment", {})
        assert isinstance(env, dict), f"{name}: use the mapping form of environment"
        if TOKEN_ENV in env:
            assert re.fullmatch(r"\$\{JECTGUARD_ADMIN_TOKEN(:?-)?\}", str(env[TOKEN_ENV])), (
                f"{name}: {TOKEN_ENV} must come from .env or the shell, not the file"
            )
    for env_instr in instructions("ENV") + instructions("ARG"):
        assert TOKEN_ENV not in env_instr.value


def test_scale_out_wiring() -> None:
    services = load_compose()["services"]
    proxy = services["proxy"]
    assert proxy["deploy"]["replicas"] >= 2
    assert proxy["depends_on"]["refresher"]["condition"] == "service_healthy"
    haproxy = services["haproxy"]
    assert haproxy["image"].startswith("haproxy:")
    assert mounts(haproxy)["/usr/local/etc/haproxy/haproxy.cfg"] == ("./haproxy/haproxy.cfg", "ro")
    assert "proxy" in haproxy["depends_on"]
    # HAProxy's servers are the proxy service's replicas, on its ports.
    cfg = HAPROXY_CFG.read_text()
    args = parse_run(service_argv("proxy"))
    (target,) = re.findall(r"^\s*server-template\s+\S+\s+\d+\s+(\S+)\s*$", cfg, re.M)
    assert target == f"proxy:{args.listen_port}"
    assert re.search(rf"^\s*default-server\s+check\s+port\s+{args.admin_port}\b", cfg, re.M)
    # HAProxy names each client in a PROXY v2 header, trusted from HAProxy's address only.
    assert re.search(r"^\s*default-server\s.*\bsend-proxy-v2\b", cfg, re.M)
    (haproxy_ip,) = {n["ipv4_address"] for n in haproxy["networks"].values()}
    assert args.trusted_proxies == [f"{haproxy_ip}/32"]
    assert "scale" in proxy["networks"]


def test_haproxy_cfg_shape() -> None:
    cfg = HAPROXY_CFG.read_text()
    assert re.search(r"^defaults\n(?:\s+.*\n)*?\s+mode tcp$", cfg, re.M)
    assert "option httpchk" in cfg
    assert re.search(r"http-check send meth GET uri /healthz\b", cfg)
    assert "http-check expect status 200" in cfg
    assert "tcp-request connection reject unless private_clients" in cfg
    exe = shutil.which("haproxy")
    if exe is None:
        pytest.skip("haproxy is not installed (Debian package haproxy)")
    r = subprocess.run(
        [exe, "-c", "-f", str(HAPROXY_CFG)], capture_output=True, text=True, timeout=30
    )
    assert r.returncode == 0, r.stdout + r.stderr


# -- Dockerfile -------------------------------------------------------------------


def test_dockerfile_instructions() -> None:
    instrs = dockerfile()
    assert instrs[0].keyword == "FROM" and instrs[0].value == "python:3.12-slim"
    runs = " ".join(i.value for i in instructions("RUN"))
    assert re.search(r"\bpip install \.(\s|$)", runs)
    assert "useradd" in runs
    copied = {i.value.split()[0] for i in instructions("COPY")}
    assert {"pyproject.toml", "proxy_addons", "blocklists"} <= copied
    # A non-root user, set after the last RUN and before the process starts.
    (user,) = instructions("USER")
    uid = user.value.split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "USER must be a numeric, non-root uid"
    keywords = [i.keyword for i in instrs]
    last_run = max(n for n, k in enumerate(keywords) if k == "RUN")
    assert last_run < keywords.index("USER") < keywords.index("ENTRYPOINT")
    (expose,) = instructions("EXPOSE")
    assert {int(p) for p in expose.value.split()} == {PROXY_PORT, ADMIN_PORT}
    (entry,) = instructions("ENTRYPOINT")
    assert exec_form(entry.value) == ["jectguard"]
    args = parse_run(image_cmd())
    assert args.sources.startswith("/app/")  # WORKDIR /app, where blocklists/ is copied
    assert any(i.value == "/app" for i in instructions("WORKDIR"))


def test_dockerignore_keeps_secrets_and_clutter_out() -> None:
    patterns = {
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".git", ".venv", ".env", "*.env", "tests"} <= patterns
    assert not patterns & {"pyproject.toml", "README.md", "proxy_addons", "blocklists"}


# -- the scale-out shape as processes on loopback ---------------------------------


def jectguard_argv() -> list[str]:
    """The installed ``jectguard`` command (the image's entrypoint)."""
    script = Path(sys.executable).with_name("jectguard")
    return [str(script)] if script.exists() else [sys.executable, "-m", "proxy_addons.cli"]


def localize(
    argv: list[str], flags: dict[str, str], sets: dict[str, str] | None = None
) -> list[str]:
    """A container command line with its paths and ports swapped for this machine's."""
    out = list(argv)
    sets = sets or {}
    seen = set()
    for i in range(len(out) - 1):
        if out[i] in flags:
            out[i + 1] = flags[out[i]]
            seen.add(out[i])
        elif out[i] == "--set":
            name = out[i + 1].partition("=")[0]
            if name in sets:
                out[i + 1] = f"{name}={sets[name]}"
                seen.add(name)
    missing = (set(flags) | set(sets)) - seen
    assert not missing, f"the compose command no longer has {sorted(missing)}"
    return out


def pid_of_peer(peer: tuple[str, int]) -> int | None:
    """Which local process owns the client side of a loopback connection."""
    import psutil

    for conn in psutil.net_connections(kind="tcp"):
        if conn.laddr and (conn.laddr.ip, conn.laddr.port) == tuple(peer[:2]):
            return conn.pid
    return None


class AttributingFeedServer(FeedServer):
    """A feed server that also records which process fetched each feed."""

    def __init__(self) -> None:
        super().__init__()
        self.fetchers: list[tuple[str, int | None]] = []

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        self.fetchers.append((request.path, pid_of_peer(peer) if peer else None))
        return await super()._handle(request)


@dataclass
class Proc:
    name: str
    proc: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path
    admin_port: int
    proxy_port: int | None = None

    def output(self) -> str:
        return (
            f"--- {self.name} stderr:\n{self.stderr.read_text(errors='replace')}\n"
            f"--- {self.name} stdout:\n{self.stdout.read_text(errors='replace')[-4000:]}"
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(STOP_TIMEOUT)


@dataclass
class Stack:
    tmp: Path
    token: str
    feeds: AttributingFeedServer
    local_list: Path
    sources: Path
    cache: Path
    confdir: Path
    procs: list[Proc] = field(default_factory=list)
    haproxy_port: int = 0
    haproxy_socket: Path | None = None

    def env(self) -> dict[str, str]:
        # What the image and compose set: ENV JECTGUARD_CACHE_DIR/CONFDIR, the token from .env.
        env = {k: v for k, v in os.environ.items() if not k.startswith("JECTGUARD_")}
        env.update(
            {
                "JECTGUARD_CACHE_DIR": str(self.cache),
                "JECTGUARD_CONFDIR": str(self.confdir),
                TOKEN_ENV: self.token,
            }
        )
        return env

    def start(self, name: str, service: str) -> Proc:
        admin = free_port()
        flags = {
            "--admin-host": "127.0.0.1",
            "--admin-port": str(admin),
            "--confdir": str(self.confdir),
            "--cache-dir": str(self.cache),
            "--sources": str(self.sources),
        }
        args = parse_run(service_argv(service))
        proxy_port = None
        if set_options(args).get("server") != "false":
            proxy_port = free_port()
            flags |= {"--listen-host": "127.0.0.1", "--listen-port": str(proxy_port)}
        if args.trusted_proxies:
            # HAProxy connects from 127.0.0.1; the test's own clients use DIRECT_SOURCE.
            flags["--trusted-proxies"] = "127.0.0.1/32"
        argv = localize(service_argv(service), flags)
        out, err = self.tmp / f"{name}.stdout", self.tmp / f"{name}.stderr"
        with out.open("wb") as o, err.open("wb") as e:
            proc = subprocess.Popen(
                [*jectguard_argv(), *argv], stdout=o, stderr=e, env=self.env(), cwd=self.tmp
            )
        p = Proc(name, proc, out, err, admin, proxy_port)
        self.procs.append(p)
        wait_until(
            lambda: admin_get(p, "/healthz")[0] == 200,
            START_TIMEOUT,
            f"{name} did not answer /healthz",
            p,
        )
        if proxy_port is not None:
            wait_until(lambda: port_open(proxy_port), START_TIMEOUT, f"{name} did not listen", p)
        return p


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def admin_get(p: Proc, path: str, token: str | None = None) -> tuple[int, Any]:
    req = urllib.request.Request(f"http://127.0.0.1:{p.admin_port}{path}")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=3) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, None
    except OSError:
        return 0, None


def wait_until(cond: Callable[[], bool], timeout: float, what: str, *procs: Proc) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in procs:
            if p.proc.poll() is not None:
                pytest.fail(f"{p.name} exited with {p.proc.returncode}\n{p.output()}")
        if cond():
            return
        time.sleep(0.2)
    pytest.fail(f"{what} within {timeout}s\n" + "\n".join(p.output() for p in procs))


def proxy_get(port: int, url: str) -> tuple[int, dict[str, str], str]:
    """GET an absolute URL through the HTTP proxy on ``port`` (a new connection each time).

    From DIRECT_SOURCE, not 127.0.0.1: that is HAProxy's address, which must send a
    PROXY header (HAProxy's own requests come from 127.0.0.1 and name this address).
    """
    conn = http.client.HTTPConnection(
        "127.0.0.1", port, timeout=10, source_address=(DIRECT_SOURCE, 0)
    )
    try:
        conn.request("GET", url, headers={"Connection": "close"})
        resp = conn.getresponse()
        return (
            resp.status,
            {k.lower(): v for k, v in resp.getheaders()},
            resp.read().decode("utf-8", "replace"),
        )
    finally:
        conn.close()


def block_events(p: Proc) -> int:
    """Block events in a process's JSON event stream (its stdout)."""
    n = 0
    for line in p.stdout.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            n += json.loads(line).get("event") == "block"
    return n


def event_clients(p: Proc) -> set[str]:
    """The ``client`` of every event in a process's JSON event stream."""
    out = set()
    for line in p.stdout.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError, AttributeError):
            out.add(str(json.loads(line).get("client")))
    return out


def blocked(port: int, host: str) -> bool:
    try:
        status, headers, _ = proxy_get(port, f"http://{host}/page")
    except (OSError, http.client.HTTPException):  # an allowed .test name may resolve slowly
        return False
    return status == 403 and "x-jectguard-block" in headers


def render_haproxy_cfg(
    template: str, bind: str, servers: list[tuple[str, int, int]], stats_socket: Path
) -> str:
    """haproxy/haproxy.cfg for loopback: fixed servers instead of Docker's DNS."""

    def swap(pattern: str, repl: str, text: str) -> str:
        new, n = re.subn(pattern, lambda _m: repl, text, flags=re.M)
        assert n == 1, f"haproxy.cfg: expected one line matching {pattern!r}"
        return new

    cfg = swap(r"^(\s*)bind :\d+$", f"    bind {bind}", template)
    cfg = swap(r" init-addr none resolvers docker$", "", cfg)
    cfg = swap(
        r"^\s*server-template .*$",
        "\n".join(
            f"    server {name} 127.0.0.1:{port} port {admin}" for name, port, admin in servers
        ),
        cfg,
    )
    cfg = swap(r"^resolvers docker\n(?:[ \t]+.*\n)+", "", cfg)
    # Fast checks for the test, and a stats socket to read the servers' state.
    cfg = cfg.replace(" inter 2s fall 2 rise 2", " inter 300ms fall 2 rise 1")
    cfg = swap(r"^global$", f"global\n    stats socket {stats_socket} mode 600 level admin", cfg)
    return cfg


def haproxy_servers(sock_path: Path) -> dict[str, str]:
    """Server name -> status (UP, DOWN, ...) from HAProxy's stats socket."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(3)
        s.connect(str(sock_path))
        s.sendall(b"show stat\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    lines = data.decode().splitlines()
    header = lines[0].lstrip("# ").split(",")
    out = {}
    for line in lines[1:]:
        row = dict(zip(header, line.split(","), strict=False))
        if row.get("pxname") == "jectguard_proxies" and row.get("svname") not in (
            "BACKEND",
            "FRONTEND",
            None,
        ):
            out[row["svname"]] = row["status"]
    return out


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    feeds = AttributingFeedServer().start()
    feeds.feed("remote", b"feed-one.test\n")
    local = tmp_path / "local.txt"
    local.write_text("local-one.test\n")
    sources = tmp_path / "sources.toml"
    sources.write_text(
        '[canaries]\nnever_block = ["google.com"]\n\n'
        '[[source]]\nname = "local"\npath = "local.txt"\nformat = "domains"\n'
        'category = "malware"\n\n'
        f'[[source]]\nname = "remote"\nurl = "{feeds.url("remote")}"\nformat = "domains"\n'
        'category = "malware"\nrefresh = "6h"\n'
    )
    s = Stack(
        tmp_path,
        secrets.token_urlsafe(24),
        feeds,
        local,
        sources,
        tmp_path / "cache",
        tmp_path / "mitmproxy",
    )
    try:
        yield s
    finally:
        for p in reversed(s.procs):
            with contextlib.suppress(Exception):
                p.stop()
        feeds.stop()


def start_haproxy(s: Stack, replicas: list[Proc]) -> Proc:
    exe = shutil.which("haproxy")
    assert exe is not None
    s.haproxy_port = free_port()
    s.haproxy_socket = s.tmp / "haproxy.sock"
    cfg = s.tmp / "haproxy.cfg"
    cfg.write_text(
        render_haproxy_cfg(
            HAPROXY_CFG.read_text(),
            f"127.0.0.1:{s.haproxy_port}",
            [(p.name, p.proxy_port or 0, p.admin_port) for p in replicas],
            s.haproxy_socket,
        )
    )
    check = subprocess.run([exe, "-c", "-f", str(cfg)], capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr
    log = s.tmp / "haproxy.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([exe, "-db", "-f", str(cfg)], stdout=out, stderr=subprocess.STDOUT)
    p = Proc("haproxy", proc, log, log, admin_port=0, proxy_port=s.haproxy_port)
    s.procs.append(p)
    return p


@pytest.mark.slow
@pytest.mark.timeout(240)  # the waits below are bounded one by one; this bounds their sum
def test_scale_out_on_loopback(stack: Stack) -> None:
    if shutil.which("haproxy") is None:
        pytest.skip("haproxy is not installed (Debian package haproxy)")
    s = stack
    # Replica A starts before anything was ever published: it serves only the local list.
    a = s.start("proxy-a", "proxy")
    assert blocked(a.proxy_port or 0, "local-one.test")
    assert not blocked(a.proxy_port or 0, "feed-one.test")

    refresher = s.start("refresher", "refresher")
    pointer = s.cache / "snapshots" / "current"

    def published_with_feed() -> bool:
        # The first snapshot may hold the local list only: the feed is fetched just after.
        with contextlib.suppress(OSError, ValueError):
            return "remote" in json.loads(pointer.read_text()).get("lists", {})
        return False

    wait_until(
        published_with_feed,
        START_TIMEOUT,
        "the refresher published no snapshot with the feed",
        refresher,
    )
    # Replica B starts after the snapshot exists.
    b = s.start("proxy-b", "proxy")
    replicas = [a, b]

    def serving_current() -> bool:
        want = json.loads(pointer.read_text())["snapshot"]
        for p in replicas:
            status, doc = admin_get(p, "/api/status", s.token)
            if (
                status != 200
                or not doc["snapshot"]["path"]
                or (Path(doc["snapshot"]["path"]).name != Path(want).name)
            ):
                return False
        return True

    wait_until(
        serving_current,
        PROPAGATE_TIMEOUT,
        "the replicas did not load the snapshot",
        *replicas,
        refresher,
    )
    for p in replicas:
        assert blocked(p.proxy_port or 0, "feed-one.test"), p.name
        assert blocked(p.proxy_port or 0, "local-one.test"), p.name

    # HAProxy in front: health checks on /healthz bring both replicas UP.
    haproxy = start_haproxy(s, replicas)
    assert s.haproxy_socket is not None
    sock = s.haproxy_socket
    wait_until(
        lambda: sock.exists() and haproxy_servers(sock) == {"proxy-a": "UP", "proxy-b": "UP"},
        START_TIMEOUT,
        "HAProxy did not see both replicas UP",
        haproxy,
    )
    before = {p.name: block_events(p) for p in replicas}
    for _ in range(4):
        status, headers, body = proxy_get(s.haproxy_port, "http://feed-one.test/page")
        assert status == 403 and "x-jectguard-block" in headers
        assert "feed-one.test" in body
    wait_until(
        lambda: all(block_events(p) > before[p.name] for p in replicas),
        10,
        "HAProxy did not spread connections over both replicas (block events on stdout)",
        haproxy,
    )
    # Through HAProxy, each replica names the real client (PROXY v2), never HAProxy.
    for p in replicas:
        assert DIRECT_SOURCE in event_clients(p) and "127.0.0.1" not in event_clients(p)

    # A new entry, refreshed once, reaches both replicas without a restart.
    s.local_list.write_text("local-one.test\nlocal-two.test\n")
    wait_until(
        lambda: all(blocked(p.proxy_port or 0, "local-two.test") for p in replicas),
        PROPAGATE_TIMEOUT,
        "the new entry did not reach both replicas",
        *replicas,
        refresher,
    )
    assert blocked(s.haproxy_port, "local-two.test")
    assert all(p.proc.poll() is None for p in [*replicas, refresher])

    # The feed was fetched by the refresher alone.
    fetches = [pid for path, pid in s.feeds.fetchers if path == "/remote"]
    assert fetches, "the refresher never fetched the feed"
    assert set(fetches) == {refresher.proc.pid}, (
        f"feed fetched by {fetches}; refresher is {refresher.proc.pid}, "
        f"replicas {[p.proc.pid for p in replicas]}"
    )

    # A replica that dies is taken out by the health check; the other carries on.
    a.proc.kill()
    a.proc.wait(STOP_TIMEOUT)
    wait_until(
        lambda: haproxy_servers(sock).get("proxy-a", "").startswith("DOWN"),
        START_TIMEOUT,
        "HAProxy did not mark the dead replica DOWN",
        haproxy,
    )
    for _ in range(3):
        assert blocked(s.haproxy_port, "feed-one.test")
