"""Test data with known answers: event generators and a ground truth computed in plain Python.

Deliberately independent of Lamina's code paths: the truth is computed from the generator's
own records (it knows which are bad and which are duplicates), with ``statistics`` and sets.
"""

from __future__ import annotations

import json
import random
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

BASE = 1_795_000_000  # 2026-11-18T08:26:40Z, a fixed "now" for reproducible data


@dataclass
class Generated:
    """Raw records to send (good, duplicated and bad) and the good events, once each."""

    raw: list[bytes] = field(default_factory=list)
    good: list[dict[str, Any]] = field(default_factory=list)
    bad: list[bytes] = field(default_factory=list)


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def pageviews(n: int, seed: int = 1, now: float = BASE) -> Generated:
    """Pageviews with nulls, redeliveries, events up to 3 days late and bad records."""
    rng = random.Random(seed)
    g = Generated()
    urls = [f"/p/{i}" for i in range(8)]
    for _ in range(n):
        late = rng.random() < 0.1
        ts = now - rng.uniform(0, 3 * 86400 if late else 3 * 3600)
        ev = {
            "event_id": str(uuid.UUID(int=rng.getrandbits(128))),
            "ts": iso(ts),
            "url": rng.choice(urls),
            "visitor": None if rng.random() < 0.05 else f"v{rng.randrange(300)}",
            "status": rng.choice([200, 200, 200, 301, 404, 500]),
            "load_ms": None if rng.random() < 0.1 else round(rng.uniform(5, 900), 3),
        }
        g.good.append(ev)
        raw = json.dumps(ev).encode()
        g.raw.append(raw)
        if rng.random() < 0.05:  # a producer retry: the same event delivered again
            g.raw.append(raw)
        if rng.random() < 0.02:
            bad = rng.choice(
                [
                    b"{not json",
                    json.dumps({**ev, "event_id": None}).encode(),
                    json.dumps({**ev, "status": "ok"}).encode(),
                    json.dumps({**ev, "ts": "yesterday"}).encode(),
                    b"[1, 2, 3]",
                ]
            )
            g.bad.append(bad)
            g.raw.append(bad)
    return g


def sensors(n: int, seed: int = 2, now: float = BASE) -> Generated:
    rng = random.Random(seed)
    g = Generated()
    for _ in range(n):
        ts_ms = int((now - rng.uniform(0, 2 * 3600) - (86400 if rng.random() < 0.05 else 0)) * 1000)
        ev = {
            "reading_id": str(uuid.UUID(int=rng.getrandbits(128))),
            "ts_ms": ts_ms,
            "sensor": f"s{rng.randrange(5)}",
            "site": rng.choice(["north", "south"]),
            "temperature": None if rng.random() < 0.05 else round(rng.gauss(20, 6), 2),
        }
        g.good.append(ev)
        raw = json.dumps(ev).encode()
        g.raw.append(raw)
        if rng.random() < 0.05:
            g.raw.append(raw)
        if rng.random() < 0.01:
            bad = json.dumps({**ev, "ts_ms": "noon"}).encode()
            g.bad.append(bad)
            g.raw.append(bad)
    return g


def metering(n: int, seed: int = 3, now: float = BASE) -> Generated:
    rng = random.Random(seed)
    g = Generated()
    for _ in range(n):
        ev = {
            "usage_id": str(uuid.UUID(int=rng.getrandbits(128))),
            "ts": now - rng.uniform(0, 5 * 3600),
            "customer": f"c{rng.randrange(6)}",
            "instance_type": rng.choice(["m5", "c6"]),
            "instance_seconds": rng.choice([None, 60, 300, 3600]),
        }
        g.good.append(ev)
        g.raw.append(json.dumps(ev).encode())
    return g


def event_seconds(ev: dict[str, Any]) -> float:
    if "ts_ms" in ev:
        return float(ev["ts_ms"]) / 1000
    if isinstance(ev["ts"], str):
        return datetime.fromisoformat(ev["ts"]).timestamp()
    return float(ev["ts"])


def truth(view: str, events: list[dict[str, Any]]) -> dict[tuple[str, int], dict[str, Any]]:
    """``{(key, bucket_start): {aggregation: exact value}}`` for the three example views.

    Distinct counts and quantiles are exact here (sets, sorted lists); the comparison
    allows the sketches' stated error.
    """
    cols: dict[tuple[str, int], dict[str, list[Any]]] = defaultdict(lambda: defaultdict(list))
    width = {"web_pageviews": 3600, "iot_temperature": 60, "cloud_metering": 3600}[view]
    for ev in events:
        b = int(event_seconds(ev) * 1000) // (width * 1000) * width
        if view == "web_pageviews":
            if ev["status"] >= 400:
                continue
            c = cols[(ev["url"], b)]
            c["n"].append(1)
            c["visitor"].append(ev["visitor"])
            c["load_ms"].append(ev["load_ms"])
        elif view == "iot_temperature":
            c = cols[(ev["sensor"], b)]
            c["temperature"].append(ev["temperature"])
        else:
            c = cols[(ev["customer"], b)]
            c["n"].append(1)
            c["instance_seconds"].append(ev["instance_seconds"])
    out: dict[tuple[str, int], dict[str, Any]] = {}
    for key, c in cols.items():
        if view == "web_pageviews":
            loads = [v for v in c["load_ms"] if v is not None]
            out[key] = {
                "pageviews": len(c["n"]),
                "visitors": len({v for v in c["visitor"] if v is not None}),
                "load_ms_mean": sum(loads) / len(loads) if loads else None,
            }
        elif view == "iot_temperature":
            t = sorted(v for v in c["temperature"] if v is not None)
            out[key] = {
                "readings": len(t),
                "temp_min": t[0] if t else None,
                "temp_max": t[-1] if t else None,
                "temp_mean": sum(t) / len(t) if t else None,
                "temp_q": t,  # the sorted values; compared by rank
            }
        else:
            secs = [v for v in c["instance_seconds"] if v is not None]
            out[key] = {"instance_seconds": sum(secs) if secs else None, "records": len(c["n"])}
    return out


def check(view: str, got: dict[str, Any], want: dict[str, Any], q: float = 0.95) -> list[str]:
    """Differences between a presented bucket and the truth ('' list when equal)."""
    problems = []
    for name, w in want.items():
        g = got.get(name)
        if name == "visitors":
            if abs(g - w) > max(1, 0.05 * w):
                problems.append(f"{name}: {g} vs {w}")
        elif name == "temp_q":
            if not w:
                if g is not None:
                    problems.append(f"{name}: {g} vs empty")
                continue
            rank = sum(1 for v in w if v <= g) / len(w)
            if abs(rank - q) > 0.05 and len(w) > 20:
                problems.append(f"{name}: rank {rank:.3f} vs q {q}")
            if not (w[0] <= g <= w[-1]):
                problems.append(f"{name}: {g} outside [{w[0]}, {w[-1]}]")
        elif isinstance(w, float) or isinstance(g, float):
            if w is None or g is None or abs(g - w) > 1e-9 * max(1.0, abs(w)):
                problems.append(f"{name}: {g} vs {w}")
        elif g != w:
            problems.append(f"{name}: {g} vs {w}")
    return problems
