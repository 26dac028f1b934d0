"""Reading a source's dead letters (its ``<topic>.deadletters`` Kafka topic) and its listed
duplicates (``<topic>.duplicates``, same shape).

The dead-letter sink is at least once (a replayed micro-batch may write a record again), so
letters are keyed by their origin (topic, partition, offset) and each origin is shown once.
Rejections from ``master import`` are in JSON-lines files under the master dataset.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from kafka import KafkaConsumer, TopicPartition

from lamina.events import reason_kind
from lamina.settings import Settings
from lamina.streams import deadletter_topic, duplicates_topic
from lamina.views import Source


def _letter(record: Any) -> dict[str, Any]:
    """A dead letter as Lamina's dead-letter sink wrote it: ``reason``, ``raw`` (the record as
    text, bytes that are not UTF-8 replaced by U+FFFD; only its first
    :data:`~lamina.streams.DEADLETTER_RAW_MAX` bytes if ``raw_truncated``), ``raw_size`` (the
    record's bytes), its origin (``topic``, ``partition``, ``offset``) and ``timestamp``. A
    record someone else put in the topic is kept too (nothing is hidden), with reason ``not a
    Lamina dead letter`` and its own coordinates in the dead-letter topic as origin."""
    try:
        d: dict[str, Any] = json.loads(record.value)
        # A tombstone (null value) has no raw bytes: Spark's to_json leaves the field out.
        raw = base64.b64decode(d.pop("raw_base64", None) or "")
        d["raw"] = raw.decode(errors="replace")
        d["raw_size"] = int(d.get("raw_size") or len(raw))  # letters before raw_size: whole
        d["raw_truncated"] = d["raw_size"] > len(raw)
        if not {"reason", "topic", "partition", "offset", "timestamp"} <= d.keys():
            raise ValueError("missing fields")
        return d
    except (ValueError, KeyError, TypeError, AttributeError):
        value = bytes(record.value or b"")
        return {
            "reason": "not a Lamina dead letter (written to the topic by something else)",
            "raw": value.decode(errors="replace"),
            "raw_size": len(value),
            "raw_truncated": False,
            "topic": record.topic,
            "partition": record.partition,
            "offset": record.offset,
            "timestamp": "",
        }


def read_deadletters(
    settings: Settings, source: Source, timeout_s: float = 10.0, *, topic: str | None = None
) -> list[dict[str, Any]]:
    """Every distinct dead letter of ``source``, oldest first (``topic``: read another
    listing of the same shape instead, e.g. :func:`read_duplicates`)."""
    topic = topic or deadletter_topic(source)
    consumer = KafkaConsumer(
        **settings.kafka.client_config(),
        enable_auto_commit=False,
        group_id=None,
        consumer_timeout_ms=int(timeout_s * 1000),
    )
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        if not parts:
            return []
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        end = consumer.end_offsets(tps)
        seen: dict[tuple[str, int, int], dict[str, Any]] = {}
        remaining = {tp for tp in tps if end[tp] > 0}
        while remaining:
            batch = consumer.poll(timeout_ms=int(timeout_s * 1000))
            if not batch:
                break
            for tp, records in batch.items():
                for r in records:
                    d = _letter(r)
                    seen.setdefault((d["topic"], d["partition"], d["offset"]), d)
                if consumer.position(tp) >= end[tp]:
                    remaining.discard(tp)
        return sorted(seen.values(), key=lambda d: (d["timestamp"], d["partition"], d["offset"]))
    finally:
        consumer.close()


def read_duplicates(
    settings: Settings, source: Source, timeout_s: float = 10.0
) -> list[dict[str, Any]]:
    """Every duplicate the source job listed (counted by the speed layer, or possibly twice
    in the merged answer until the next batch: see :mod:`speed.dedup`), oldest first."""
    return read_deadletters(settings, source, timeout_s, topic=duplicates_topic(source))


EXAMPLES = 2
"""Distinct reasons shown per kind of problem in a dead-letter summary (newest first)."""


def summarize(letters: list[dict[str, Any]], examples: int = EXAMPLES) -> list[dict[str, Any]]:
    """``letters`` (oldest first, as :func:`read_deadletters` returns them) grouped by the
    kind of problem (:func:`lamina.events.reason_kind`), most frequent kind first: each
    ``{"kind", "count", "examples"}``, where ``examples`` are up to ``examples`` letters with
    distinct reasons other than the kind itself, newest first (a kind whose reasons name no
    value has none). ``lamina deadletters`` and ``GET /deadletters`` both show this."""
    kinds: dict[str, list[dict[str, Any]]] = {}
    for d in letters:
        kinds.setdefault(reason_kind(d["reason"]), []).append(d)
    out = []
    for kind, ds in sorted(kinds.items(), key=lambda kv: -len(kv[1])):
        shown: dict[str, dict[str, Any]] = {}
        for d in reversed(ds):
            if d["reason"] != kind and len(shown) < examples:
                shown.setdefault(d["reason"], d)
        out.append({"kind": kind, "count": len(ds), "examples": list(shown.values())})
    return out
