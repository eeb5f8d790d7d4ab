"""Server time of each dashboard page on a demo store.

    .venv/bin/cohortsync demo --project /tmp/shop          # once: 20,000 shoppers
    .venv/bin/python bench/dashboard.py --project /tmp/shop [--runs 10]

The app runs in this process without its background workers (nothing else touches the store)
and each page is requested through Starlette's TestClient, so the time is the server's own:
routing, store statements, engine calls and template rendering. Aim: every page under 200 ms.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from cohortsync.engine import Engine
from cohortsync.server.admin_auth import TOKEN_ENV
from cohortsync.server.app import create_app

TOKEN = "bench-dashboard-token-0123456789"


def pages(engine: Engine) -> list[tuple[str, str]]:
    """Every page kind and the parts htmx loads after it, with the largest audience, the
    busiest destination and one profile."""
    sizes = engine.figures.audience_sizes()
    audience = max(sizes, key=lambda n: sizes[n].members) if sizes else ""
    status = engine.sync_status()
    destination = max(status, key=lambda s: s.desired).destination if status else ""
    email = engine.store.query(  # type: ignore[attr-defined]
        "SELECT value FROM identities WHERE kind = 'email' ORDER BY value LIMIT 1"
    )[0][0]
    return [
        ("overview", "/ui/"),
        ("  its destinations (htmx part)", "/ui/overview/destinations"),
        (f"audience {audience}", f"/ui/audiences/{audience}"),
        ("  its destinations (htmx part)", f"/ui/audiences/{audience}/destinations"),
        ("  its lint (htmx part)", f"/ui/audiences/{audience}/lint"),
        (f"destination {destination}", f"/ui/destinations/{destination}"),
        ("  its delivery state (htmx part)", f"/ui/destinations/{destination}/delivery"),
        ("profile", f"email:{email}"),
        ("report", "/ui/report"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", type=Path, required=True)
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    os.environ[TOKEN_ENV] = TOKEN
    with Engine.open(args.project) as engine:
        stats = engine.stats()
        print(f"{stats['events']['total']:,} events, {stats['profiles']['total']:,} profiles")
        with TestClient(create_app(engine, background=False)) as client:
            client.post("/ui/login", data={"token": TOKEN}, follow_redirects=False)
            print(f"{'page':<46} {'median ms':>10} {'max ms':>8}")

            def fetch(path: str) -> Any:
                if path.startswith("/"):
                    return client.get(path)
                return client.post("/ui/profile", data={"identifier": path})  # the lookup

            for name, path in pages(engine):
                fetch(path)  # warm: templates compiled, statements planned once
                took = []
                for _ in range(args.runs):
                    start = time.perf_counter()
                    answer = fetch(path)
                    took.append((time.perf_counter() - start) * 1000)
                    assert answer.status_code == 200, (path, answer.status_code)
                print(f"{name:<46} {statistics.median(took):>10.1f} {max(took):>8.1f}")


if __name__ == "__main__":
    main()
