"""A real-time table's rebuild records ``rebuilding`` and waits ``REBUILD_GRACE_S`` before it
drops the table: a query server reuses its snapshot of the record for up to
``SNAPSHOT_MAX_AGE_S``, so one that read ``ready`` just before the record changed must still
find the old table (with its rows) for that long, never the dropped or the new, empty one
taken for a ready table."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from cassandra import InvalidRequest
from cassandra.cluster import NoHostAvailable
from cassandra.protocol import ServerError

from lamina.settings import Settings
from lamina.views import load_views
from serving.schema import realtime_index_table, realtime_table
from serving.store import REBUILD_GRACE_S, SNAPSHOT_MAX_AGE_S, open_store
from tests.conftest import isolated
from tests.integration.conftest import drop_keyspace


def test_a_rebuild_keeps_the_table_for_a_snapshot_s_lifetime_after_recording_rebuilding(
    stack: Settings, tmp_path: Path
) -> None:
    settings = isolated(stack, tmp_path)
    catalog = load_views(settings.pipeline.views_file)
    view = catalog.view("web_pageviews")
    table = realtime_table(view)
    try:
        with open_store(settings.cassandra, catalog) as store:
            assert store.follow_definition(view, first_batch=0, covers_from=None).state == "ready"
            ks = store.ks
            store.session.execute(
                f"INSERT INTO {ks}.{table} (url, bucket, ingest_epoch) VALUES ('/k', 0, 0)"
            )
            read = store.session.prepare(f"SELECT url FROM {ks}.{table} WHERE url = '/k'")
            # Its index dropped by hand: the source job's next start rebuilds the table.
            store.session.execute(f"DROP TABLE {ks}.{realtime_index_table(view)}", timeout=120)

            record = store.session.prepare(
                f"SELECT state, updated_at FROM {ks}.realtime_tables WHERE view_name = ?"
            )
            seen: list[tuple[float, bool]] = []  # (wall clock, the old row readable)
            rebuilding_at: list[float] = []  # when "rebuilding" was recorded (updated_at)
            stop = threading.Event()

            def watch() -> None:
                while not stop.is_set():
                    at = time.time()
                    try:
                        readable = store.session.execute(read).one() is not None
                    except (InvalidRequest, NoHostAvailable, ServerError):
                        readable = False  # the table is being dropped ("Unknown CF")
                    seen.append((at, readable))
                    rec = store.session.execute(record, (view.name,)).one()
                    if rec is not None and rec.state == "rebuilding" and not rebuilding_at:
                        rebuilding_at.append(rec.updated_at)

            watcher = threading.Thread(target=watch)
            watcher.start()
            try:
                rec = store.follow_definition(view, first_batch=1, covers_from=None)
            finally:
                stop.set()
                watcher.join()
            assert rec.state == "ready" and rebuilding_at, "the watcher never saw the rebuild"
            # A snapshot read just before "rebuilding" was recorded is reused until a
            # SNAPSHOT_MAX_AGE_S later: the old table answers throughout.
            hazard = [
                (at, ok)
                for at, ok in seen
                if rebuilding_at[0] <= at < rebuilding_at[0] + SNAPSHOT_MAX_AGE_S
            ]
            assert hazard, "no read during the grace (the watcher was starved)"
            assert all(ok for _, ok in hazard), [
                at - rebuilding_at[0] for at, ok in hazard if not ok
            ]
            # ... and the table was rebuilt afterwards: the old row is gone.
            assert store.session.execute(read).one() is None
        assert REBUILD_GRACE_S >= 2 * SNAPSHOT_MAX_AGE_S  # a margin for a slow catalog read
    finally:
        drop_keyspace(settings)
