"""``/api/retro``: the retro-hunt's hits from the ledger, behind the admin token."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from proxy_addons.admin.app import AdminState, create_app
from proxy_addons.telemetry.events import EventLog
from proxy_addons.telemetry.ledger import Ledger, SightingBatch
from proxy_addons.telemetry.metrics import Metrics

TOKEN = "k" * 40
T0 = 1_780_000_000.0


def _state(retro: Any) -> AdminState:
    return AdminState(token=TOKEN, engine=lambda: None, events=EventLog(), metrics=Metrics(),
                      retro_hits=retro, clock=lambda: T0 + 3600)  # fmt: skip


async def test_api_retro_lists_hits_with_who_reached_them(
    aiohttp_client: Any, tmp_path: Path
) -> None:
    led = Ledger(tmp_path / "l.sqlite3")
    b = SightingBatch()
    b.add("evil.example", "10.0.0.7", "carol", T0 - 60)
    led.write(b.take())
    led.record_hits([("evil.example", "feed", "evil.example", "malware", "domain", "enforce")], T0)
    c = await aiohttp_client(
        create_app(_state(lambda since: [h.as_dict() for h in led.hits(since)]))
    )
    r = await c.get("/api/retro")
    assert r.status == 401  # the ledger is personal data: never without the token
    r = await c.get("/api/retro?days=2", headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status == 200
    doc = await r.json()
    assert doc["enabled"] is True
    [hit] = doc["hits"]
    assert hit["host"] == "evil.example" and hit["users"] == ["carol"]
    assert hit["clients"][0]["client"] == "10.0.0.7"
    r = await c.get("/api/retro?days=0", headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status == 400
    led.close()


async def test_api_retro_without_a_ledger(aiohttp_client: Any) -> None:
    c = await aiohttp_client(create_app(_state(None)))
    r = await c.get("/api/retro", headers={"Authorization": f"Bearer {TOKEN}"})
    assert (await r.json()) == {"enabled": False, "hits": []}
