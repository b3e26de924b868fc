"""jectguard run drops mitmproxy's deprecated add_log event; log output stays as it was."""

from __future__ import annotations

import asyncio
import logging

from mitmproxy.options import Options
from mitmproxy.tools.dump import DumpMaster

from proxy_addons.cli.run import drop_legacy_log_events


class Recorder:
    def __init__(self) -> None:
        self.entries: list[str] = []

    def add_log(self, entry: object) -> None:
        self.entries.append(str(getattr(entry, "msg", entry)))


async def test_log_records_no_longer_dispatch_add_log() -> None:
    master = DumpMaster(Options(), with_termlog=False, with_dumper=False)
    recorder = Recorder()
    master.addons.add(recorder)
    loop = asyncio.get_running_loop()

    async def drained() -> None:
        """The handler schedules its dispatch with call_soon_threadsafe: callbacks run in
        order, so once a marker scheduled after the records has run, so have they."""
        done = loop.create_future()
        loop.call_soon_threadsafe(done.set_result, None)
        await asyncio.wait_for(done, 5)

    try:
        logging.getLogger("jg-test").warning("before")
        await drained()
        assert any("before" in e for e in recorder.entries)  # mitmproxy's default: dispatched

        drop_legacy_log_events()
        logging.getLogger("jg-test").warning("after")
        logging.getLogger("jg-test").error("an error")
        await drained()
        assert not any("after" in e or "an error" in e for e in recorder.entries)
        # errorcheck (refuse to start after an error at start-up) has a handler of its own
        errorcheck = master.addons.get("errorcheck")
        assert any(r.getMessage() == "an error" for r in errorcheck.logger.has_errored)
    finally:
        master.addons.get("errorcheck").finish()
        for handler in list(logging.getLogger().handlers):
            if handler.__class__.__module__.startswith("mitmproxy"):
                logging.getLogger().removeHandler(handler)
