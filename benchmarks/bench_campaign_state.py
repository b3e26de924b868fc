"""The campaign detector's state at its bound: size of the JSON, time to write and read it.

    .venv/bin/python benchmarks/bench_campaign_state.py [--hosts 300000]

Fills a default detector (200,000-host cap) with more distinct hosts than it keeps,
each referenced after ``</html>`` from one of 20,000 sites by one of 50,000 clients,
then times ``to_state`` + ``json.dumps`` and ``json.loads`` + ``from_state`` and
checks the round trip.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

from proxy_addons.core.campaign import CampaignDetector, Reference


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hosts", type=int, default=300_000)
    args = ap.parse_args()
    det = CampaignDetector(warmup_seconds=0, warmup_views=0)
    t = 1.75e9
    for i in range(args.hosts):
        refs = [
            Reference(f"h{i}.tag{i % 997}.example", "script", frozenset({"after-end"}), "a1" * 6),
            Reference(f"w{i % 5000}.widgets.example", "iframe", frozenset(), "b2" * 6),
        ]
        det.observe(
            t + i, f"http://www.site{i % 20000}.example/", refs, f"10.0.{i % 250}.{i % 200}"
        )
    t0 = time.perf_counter()
    doc = json.dumps(det.to_state())
    t1 = time.perf_counter()
    back = CampaignDetector.from_state(json.loads(doc))
    t2 = time.perf_counter()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"hosts {len(det):,} (cap {det.max_hosts:,}); state JSON {len(doc) / 1e6:.1f} MB; "
          f"dump {t1 - t0:.1f} s, load {t2 - t1:.1f} s; peak RSS {rss:.0f} MB; "
          f"round trip equal: {back.to_state() == det.to_state()}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
