"""Take docs/dashboard.png: the dashboard of a real three-node cluster with a
topic under load (and one failover), in headless Chromium.

    .venv/bin/python bench/dashboard_screenshot.py [--out docs/dashboard.png] [--seconds 40]

Starts three nodes on 127.0.0.1 in a temporary directory, creates a topic
with four shards, produces at a steady rate while a consumer reads, kills
the leader of one shard (SIGKILL) and restarts its node, and screenshots
the page at the end.  Stops everything it started, by PID.  Needs Debian's
chromium and the playwright package (never ``playwright install``).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runtime.client import Consumer, Producer  # noqa: E402
from runtime.realcluster import RealCluster  # noqa: E402

TOPIC = "acme/shop/web/orders"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="docs/dashboard.png")
    ap.add_argument("--seconds", type=float, default=40.0, help="how long the load runs before the screenshot")
    ap.add_argument("--rate", type=int, default=400, help="records per second")
    a = ap.parse_args()
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="chorus-dashboard-") as tmp:
        c = RealCluster(Path(tmp), n=3)
        stop = threading.Event()
        try:
            print("starting 3 nodes ...", flush=True)
            c.start()
            c.create_topic("n1", TOPIC, shards=4)

            def load() -> None:
                with Producer(c.client("n1"), level="quorum", **c.auth) as p:
                    i = 0
                    while not stop.is_set():
                        t = time.monotonic()
                        for _ in range(a.rate // 10):
                            p.send(TOPIC, b"order %d" % i, key=b"customer-%d" % (i % 97))
                            i += 1
                        time.sleep(max(0.0, 0.1 - (time.monotonic() - t)))

            def consume() -> None:
                with Consumer(c.client("n1"), TOPIC, "billing", **c.auth) as con:
                    while not stop.is_set():
                        m = con.poll(timeout_s=1)
                        if m is not None and m.offset % 5:  # leave some unacknowledged: a visible lag
                            m.ack()

            threads = [threading.Thread(target=load, daemon=True), threading.Thread(target=consume, daemon=True)]
            for t in threads:
                t.start()
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=ARGS)
                ctx = browser.new_context(http_credentials={"username": "admin", "password": c.password},
                                          viewport={"width": 1360, "height": 1000}, device_scale_factor=1)
                page = ctx.new_page()
                page.goto(f"http://127.0.0.1:{c.cfgs['n1'].http_port}/")
                time.sleep(a.seconds / 2)
                shards = c.wait_leaders("n1", TOPIC)
                victim = next(s["leader"] for s in shards if s["leader"] != "n1")
                print(f"killing {victim} (a shard leader) ...", flush=True)
                c.kill9(victim)
                c.wait_leaders("n1", TOPIC, timeout_s=60, exclude=victim)
                c.start(victim)
                time.sleep(a.seconds / 2)
                Path(a.out).parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=a.out, full_page=True)
                browser.close()
            print(f"wrote {a.out}", flush=True)
        finally:
            stop.set()
            time.sleep(1.5)
            left = c.stop_all()
            if left:
                print(f"killed leftovers: {left}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
