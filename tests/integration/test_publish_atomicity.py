"""Publishing is atomic: readers hammering the HTTP API during a publish see the old version's
answers or the new version's, never a mix and never an error. The API answers from its cached
catalog snapshot (the fast path: one catalog read per view per
``serving.store.SNAPSHOT_MAX_AGE_S``, not one per request), and sees the publish by itself.
Top-N answers too, from its cache of folded batch index ranges (``BatchFolds``)."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from batch.imports import import_files
from batch.recompute import run_batch
from lamina.settings import Settings
from serving.api import create_app
from tests import truth
from tests.integration.conftest import drop_world, make_world

VIEW, KEY = "web_pageviews", "/p/5"
PARAMS = {"key": KEY, "from": str(truth.BASE - 4 * 86400), "to": str(truth.BASE + 3600)}
TOP = {"by": "pageviews", "limit": "5", "from": PARAMS["from"], "to": PARAMS["to"]}


def fingerprint(body: dict[str, Any]) -> str:
    return json.dumps(
        [(b["bucket_start"], b["values"]["pageviews"]) for b in body["results"][0]["buckets"]]
    )


def top_print(body: dict[str, Any]) -> str:
    return json.dumps([(r["key"], r["value"]) for r in body["results"]])


@pytest.fixture(scope="module")
def private_world(
    stack: Settings, tmp_path_factory: pytest.TempPathFactory, spark: Any
) -> Iterator[dict[str, Any]]:
    """A world of this module's own with the one view it publishes."""
    w = make_world(stack, tmp_path_factory.mktemp("atomicity"), spark, views=[VIEW])
    yield w
    drop_world(w)


def test_readers_never_see_a_mix(private_world: dict[str, Any], spark: Any, tmp_path: Path) -> None:
    settings, catalog = private_world["settings"], private_world["catalog"]
    # The server gets an already bound socket: no free-port race with other processes.
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = int(sock.getsockname()[1])
    app = create_app(settings, catalog)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.1)
        old = httpx.get(f"{base}/views/{VIEW}/query", params=PARAMS).json()
        old_version, old_print = old["provenance"]["version"], fingerprint(old)
        old_top = top_print(httpx.get(f"{base}/views/{VIEW}/top", params=TOP).json())

        # New history for the key: the next version's answer must differ from the old one.
        more = truth.pageviews(400, seed=99)
        for ev in more.good:
            ev["url"], ev["status"] = KEY, 200
        path = tmp_path / "more.jsonl"
        path.write_text("\n".join(json.dumps(ev) for ev in more.good) + "\n")
        import_files(settings, catalog.sources["pageviews"], [path])
        private_world["data"][VIEW].good.extend(more.good)  # its truth stays exact

        seen: Counter[tuple[int, str]] = Counter()
        seen_top: Counter[tuple[int, str]] = Counter()
        errors: list[str] = []
        stop = threading.Event()

        def reader(
            path: str,
            params: Any,
            print_of: Callable[[dict[str, Any]], str],
            counts: Counter[tuple[int, str]],
        ) -> None:
            """Ask ``path`` until stopped; count each answer by (version, print)."""
            with httpx.Client(base_url=base, timeout=30) as c:
                while not stop.is_set():
                    r = c.get(path, params=params)
                    if r.status_code != 200:
                        errors.append(f"{r.status_code} {r.text[:200]}")
                        continue
                    body = r.json()
                    counts[(body["provenance"]["version"], print_of(body))] += 1

        query = (f"/views/{VIEW}/query", PARAMS, fingerprint, seen)
        readers = [threading.Thread(target=reader, args=query) for _ in range(3)]
        top = (f"/views/{VIEW}/top", TOP, top_print, seen_top)
        readers.append(threading.Thread(target=reader, args=top))
        for t in readers:
            t.start()

        def await_answers(newer: bool, at_least: int = 20) -> None:
            """Until readers got ``at_least`` answers of the old (or a newer) version."""
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not errors:
                if sum(n for (v, _), n in seen.items() if (v > old_version) == newer) >= at_least:
                    return
                time.sleep(0.05)

        try:
            await_answers(newer=False)  # readers are in flight before the publish ...
            run_batch(spark, settings, catalog, [VIEW])
            await_answers(newer=True)  # ... and after it
        finally:
            stop.set()
            for t in readers:
                t.join()
        new = httpx.get(f"{base}/views/{VIEW}/query", params=PARAMS).json()
        new_top = top_print(httpx.get(f"{base}/views/{VIEW}/top", params=TOP).json())
        reads = app.state.store.service().snapshot_reads  # before the server stops
        folds = app.state.store.service().batch_folds
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()

    new_version, new_print = new["provenance"]["version"], fingerprint(new)
    assert errors == []
    # The cached path answered: far fewer catalog reads than answers.
    answered = sum(seen.values())
    print(f"[atomicity] {answered} answers from {reads} catalog snapshot reads")
    assert 0 < reads < answered / 2, (reads, answered)
    assert new_version > old_version and new_print != old_print
    assert set(seen) <= {(old_version, old_print), (new_version, new_print)}
    assert seen[(old_version, old_print)] > 0 and seen[(new_version, new_print)] > 0
    # Top-N too: only the old version's ranking or the new one's, mostly from cached folds.
    print(f"[atomicity] {sum(seen_top.values())} top answers, {folds.hits} from cached folds")
    assert new_top != old_top
    assert set(seen_top) <= {(old_version, old_top), (new_version, new_top)}, seen_top
    assert seen_top[(old_version, old_top)] > 0 and seen_top[(new_version, new_top)] > 0
    assert folds.hits > 0 and folds.misses >= 2  # one fold per version at least
    want = truth.truth(VIEW, private_world["data"][VIEW].good)
    assert json.loads(new_print) == sorted(
        [b, v["pageviews"]] for (k, b), v in want.items() if k == KEY
    )
    per_key: Counter[str] = Counter()
    for (k, _), v in want.items():
        per_key[k] += v["pageviews"]
    ranked = sorted(sorted(per_key.items()), key=lambda kv: kv[1], reverse=True)
    assert json.loads(new_top) == [list(kv) for kv in ranked[:5]]
