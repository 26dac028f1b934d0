"""Test data with known answers: event generators and a ground truth computed in plain Python.

Deliberately independent of Lamina's code paths: the truth is computed from the generator's
own records (it knows which are bad and which are duplicates), with ``statistics`` and sets.
"""

from __future__ import annotations

import bisect
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


def pageviews(
    n: int, seed: int = 1, now: float = BASE, *, redeliver: float = 0.05, bad: float = 0.02
) -> Generated:
    """Pageviews with nulls, redeliveries (a ``redeliver`` share of the events sent twice),
    events up to 3 days late and bad records (a ``bad`` share)."""
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
        if rng.random() < redeliver:  # a producer retry: the same event delivered again
            g.raw.append(raw)
        if rng.random() < bad:
            wrong = rng.choice(
                [
                    b"{not json",
                    json.dumps({**ev, "event_id": None}).encode(),
                    json.dumps({**ev, "status": "ok"}).encode(),
                    json.dumps({**ev, "ts": "yesterday"}).encode(),
                    b"[1, 2, 3]",
                ]
            )
            g.bad.append(wrong)
            g.raw.append(wrong)
    return g


def sensors(
    n: int, seed: int = 2, now: float = BASE, *, redeliver: float = 0.05, bad: float = 0.01
) -> Generated:
    """Sensor readings, 5% of them a day late, with redeliveries and bad records."""
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
        if rng.random() < redeliver:
            g.raw.append(raw)
        if rng.random() < bad:
            wrong = json.dumps({**ev, "ts_ms": "noon"}).encode()
            g.bad.append(wrong)
            g.raw.append(wrong)
    return g


def metering(
    n: int, seed: int = 3, now: float = BASE, *, redeliver: float = 0.0, bad: float = 0.0
) -> Generated:
    """Metering records up to 5 hours late; ``bad`` is accepted for a uniform signature,
    and this generator has no bad records of its own."""
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
        raw = json.dumps(ev).encode()
        g.raw.append(raw)
        if redeliver and rng.random() < redeliver:  # (no draw at 0: the same data as before)
            g.raw.append(raw)
    return g


def event_seconds(ev: dict[str, Any]) -> float:
    if "ts_ms" in ev:
        return float(ev["ts_ms"]) / 1000
    if isinstance(ev["ts"], str):
        return datetime.fromisoformat(ev["ts"]).timestamp()
    return float(ev["ts"])


WIDTH = {"web_pageviews": 3600, "iot_temperature": 60, "cloud_metering": 3600}
"""The example views' bucket widths in seconds."""

HLL_LG_K = 12
"""lg_k of the example views' distinct counts (the sketch's default)."""
HLL_EXACT_MAX = 3 * 2 ** (HLL_LG_K - 3) // 4
"""Up to this many distinct values an HLL sketch of ``HLL_LG_K`` is still in its coupon
(list/set) modes, where its rounded estimate is the exact count (384 for lg_k = 12)."""
HLL_REL_ERR = 3 * 1.04 / 2 ** (HLL_LG_K / 2)
"""Three standard deviations of HLL_8's relative error past the exact range."""
KLL_K = 200
"""k of the example views' quantile sketches (the default)."""


def kll_rank_error(k: int = KLL_K) -> float:
    """The KLL sketch's stated normalized rank error at ``k`` (single quantile, 99%)."""
    import datasketches

    return float(datasketches.kll_doubles_sketch.get_normalized_rank_error(k, False))


def truth(
    view: str, events: list[dict[str, Any]], width: int | None = None
) -> dict[tuple[str, int], dict[str, Any]]:
    """``{(key, bucket_start): {aggregation: exact value}}`` for the three example views.

    ``width`` (seconds, a multiple of the view's bucket) gives the truth of a rollup: events
    bucketed directly at the coarse width, never through the view's own buckets. Distinct
    counts and quantiles are exact here (sets, sorted lists); :func:`check` allows the
    sketches' stated error where they are not exact.
    """
    cols: dict[tuple[str, int], dict[str, list[Any]]] = defaultdict(lambda: defaultdict(list))
    width = width or WIDTH[view]
    assert width % WIDTH[view] == 0, f"{width}s is not a rollup of {view}"
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


def quantile_problem(values: list[float], got: float | None, q: float, k: int = KLL_K) -> str:
    """Why ``got`` is not a ``q``-quantile of the sorted ``values`` ('' when it is).

    A KLL sketch that saw at most ``k`` values keeps them all: its answer must then be one of
    them whose rank interval ``[#(v < got), #(v <= got)] / n`` contains ``q`` (this holds for
    both the inclusive and the exclusive quantile definitions). Past ``k`` values the
    sketch compacts, and ``q`` may be off that interval by its stated rank error.
    """
    if not values:
        return "" if got is None else f"{got} vs no values"
    if got is None:
        return f"None vs {len(values)} values"
    n = len(values)
    lo = bisect.bisect_left(values, got) / n
    hi = bisect.bisect_right(values, got) / n
    if n <= k:
        if lo == hi:
            return f"{got} is none of the {n} values (the sketch is exact up to k={k})"
        slack = 0.0
    else:
        slack = kll_rank_error(k)
    if not lo - slack <= q <= hi + slack:
        return f"{got} has rank [{lo:.4f}, {hi:.4f}] of {n} values, q={q} (allowed {slack:.4f})"
    if not values[0] <= got <= values[-1]:
        return f"{got} outside [{values[0]}, {values[-1]}]"
    return ""


def distinct_problem(got: int | None, want: int) -> str:
    """Why ``got`` is not the distinct count ``want`` ('' when it is): exact in the HLL
    sketch's exact range, else within three standard deviations."""
    if got is None:
        return f"None vs {want}"
    if want <= HLL_EXACT_MAX:
        return "" if got == want else f"{got} vs exactly {want}"
    if abs(got - want) > HLL_REL_ERR * want:
        return f"{got} vs {want} (allowed ±{HLL_REL_ERR:.1%})"
    return ""


def check(view: str, got: dict[str, Any], want: dict[str, Any], q: float = 0.95) -> list[str]:
    """Differences between a presented bucket and the truth ([] when equal).

    Exact for counts, sums, min, max and means (floats within a relative 1e-9: the order of
    addition differs between engines); distinct counts and quantiles see
    :func:`distinct_problem` and :func:`quantile_problem` (asked at ``q``). Every aggregation
    of the truth must be present in ``got``, and nothing else.
    """
    problems = []
    if set(got) != set(want):
        problems.append(f"aggregations {sorted(got)} vs {sorted(want)}")
    for name, w in want.items():
        g = got.get(name)
        if name == "visitors":
            p = distinct_problem(g, w)
        elif name == "temp_q":
            p = quantile_problem(w, g, q)
        elif isinstance(w, float) or isinstance(g, float):
            bad = w is None or g is None or abs(g - w) > 1e-9 * max(1.0, abs(w))
            p = f"{g} vs {w}" if bad else ""
        else:
            p = f"{g!r} vs {w!r}" if g != w or type(g) is not type(w) else ""
        if p:
            problems.append(f"{name}: {p}")
    return problems
