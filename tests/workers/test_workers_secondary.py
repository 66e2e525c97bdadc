"""A worker's view of the log (RocksDB secondary) and the feed into its live ring, on a real log."""
from __future__ import annotations

import pytest

from jetstream.core import LiveRing
from jetstream.events import Event
from jetstream.implementation import EventFilter
from jetstream.log.store import EventLog, LogError
from jetstream.server.subscriber import read_next_batch
from jetstream.workers.channel import _HEADER, decode_rows, encode_rows
from jetstream.workers.secondary import RingFeeder, SecondaryEventLog

BASE_US = 1_700_000_000_000_000


def events(first: int, count: int) -> list[Event]:
    return [Event(BASE_US + i, f"did:plc:{i % 7}", 0, f"app.bsky.feed.{'post' if i % 2 else 'like'}",
                  b'{"time_us":%d,"n":"%s"}' % (BASE_US + i, b"x" * (i % 50)), b"zstd-%d" % i, i)
            for i in range(first, first + count)]


@pytest.fixture
def logs(tmp_path):
    primary = EventLog(str(tmp_path / "log"))
    secondary = SecondaryEventLog(str(tmp_path / "log"), str(tmp_path / "secondary"))
    yield primary, secondary
    secondary.close()
    primary.close()


def memtable_only(primary: EventLog) -> bool:
    """Nothing of the events column family is in an SST file yet: it is all in the WAL + memtable."""
    return (primary._events.property_int_value("rocksdb.total-sst-files-size") or 0) == 0


def test_a_secondary_sees_wal_only_batches_after_catching_up_and_not_before(logs):
    primary, secondary = logs
    primary.append(events(1, 50), relay_cursor=10)
    assert memtable_only(primary), "the batch must still be unflushed for this test to mean anything"
    assert secondary.read_after(0, 1000, False) == [] and secondary.hwm() == 0
    assert secondary.catch_up() == BASE_US + 50
    assert secondary.relay_cursor() == 10
    assert secondary.read_after(0, 1000, False) == primary.read_after(0, 1000, False)
    assert secondary.read_after(0, 1000, True) == primary.read_after(0, 1000, True)
    primary.append(events(51, 5), relay_cursor=11)
    assert len(secondary.read_after(0, 1000, False)) == 50, "nothing new until the next catch-up"
    secondary.catch_up()
    assert [row.time_us for row in secondary.read_after(BASE_US + 50, 1000, False)] == \
        [BASE_US + i for i in range(51, 56)]


def test_a_secondary_follows_flushes_and_trims_of_the_primary(logs):
    primary, secondary = logs
    primary.append(events(1, 100), relay_cursor=1)
    primary._db.flush()
    primary.append(events(101, 10), relay_cursor=2)
    primary.delete_older_than(BASE_US + 21)
    secondary.catch_up()
    assert [row.time_us for row in secondary.read_after(0, 1000, False)] == [BASE_US + i for i in range(21, 111)]
    assert secondary.oldest_time_us() == BASE_US + 21


def test_the_secondary_view_refuses_writes(logs):
    _, secondary = logs
    with pytest.raises(LogError):
        secondary.append(events(1, 1), relay_cursor=1)
    with pytest.raises(LogError):
        secondary.delete_older_than(BASE_US)


def test_a_secondary_of_a_directory_that_is_no_log_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(LogError):
        SecondaryEventLog(str(tmp_path / "empty"), str(tmp_path / "secondary"))


def test_the_feed_appends_exactly_the_logged_events_above_the_floor_in_order(logs):
    primary, secondary = logs
    primary.append(events(1, 30), relay_cursor=1)
    secondary.catch_up()
    ring = LiveRing(10_000, floor_time_us=secondary.hwm())  # as a worker starts: floor at the high-water mark
    woken = []
    feeder = RingFeeder(secondary, ring, lambda: woken.append(ring.newest_time_us))
    for first in (31, 131, 231):
        primary.append(events(first, 100 if first < 200 else 7000), relay_cursor=first)
        feeder.wake(primary.hwm())
    assert ring.floor_time_us == BASE_US + 30
    held = list(ring)
    logged = primary.read_after(BASE_US + 30, 100_000, False)
    assert [event.time_us for event in held] == [row.time_us for row in logged]
    assert [event.json for event in held] == [row.payload for row in logged], "the log's very bytes"
    assert [event.zstd for event in held] == [row.payload for row in primary.read_after(BASE_US + 30, 100_000, True)]
    assert [(event.did, event.kind, event.collection) for event in held] == \
        [(row.did, row.kind, row.collection) for row in logged]
    assert woken == [BASE_US + 130, BASE_US + 230, BASE_US + 7230], "one wake-up of the readers per catch-up"
    assert [event.seq for event in held] == [row.seq for row in logged], "each ring entry carries its logged seq"


def test_a_wake_up_the_ring_already_covers_costs_no_catch_up(logs):
    primary, secondary = logs
    ring = LiveRing(100, floor_time_us=0)
    feeder = RingFeeder(secondary, ring, lambda: None)
    primary.append(events(1, 3), relay_cursor=1)
    assert feeder.wake(BASE_US + 3) == 3
    catch_ups = secondary.catch_ups
    assert feeder.wake(BASE_US + 2) == 0 and feeder.wake(BASE_US + 3) == 0
    assert secondary.catch_ups == catch_ups
    assert feeder.wake(None) == 0 and secondary.catch_ups == catch_ups + 1, "a poll always catches up"


def test_a_trim_compacted_before_the_secondary_caught_up_stays_visible_until_the_next_write(logs):
    """Why the --workers TTL compaction waits for the workers (supervisor.WorkersTtlTrimmer).

    The secondary learns of a range delete by replaying it from the WAL; compacted away
    unseen, the rows it had replayed stay visible from its memtable until a later write.
    Caught up between delete and compaction, it sees the trim at once.
    """
    primary, secondary = logs
    primary.append(events(1, 10), relay_cursor=1)
    secondary.catch_up()
    primary.trim_older_than(BASE_US + 6)  # delete and compact with no catch-up in between
    secondary.catch_up()
    assert secondary.oldest_time_us() == BASE_US + 1, "RocksDB changed: the grace may no longer be needed"
    primary.append(events(11, 1), relay_cursor=2)
    secondary.catch_up()
    assert secondary.oldest_time_us() == BASE_US + 6

    trimmed = primary.delete_older_than(BASE_US + 8)
    secondary.catch_up()  # what the grace gives every worker
    primary.compact_trimmed(trimmed)
    secondary.catch_up()
    assert secondary.oldest_time_us() == BASE_US + 8


# --- the live path: rows sent by the main process ------------------------------------------------

def feeder_for(secondary, capacity: int = 10_000):
    secondary.catch_up()
    ring = LiveRing(capacity, floor_time_us=secondary.hwm())
    secondary.ring = ring
    woken = []
    return ring, RingFeeder(secondary, ring, lambda: woken.append(ring.newest_time_us)), woken


def sent(newest_before: int, batch: list[Event]) -> tuple[int, list[Event]]:
    """The batch as a worker receives it: through the channel's encoding."""
    return decode_rows(encode_rows(newest_before, batch)[_HEADER.size:])


def test_rows_sent_after_each_batch_feed_the_ring_with_no_catch_up(logs):
    primary, secondary = logs
    primary.append(events(1, 5), relay_cursor=1)
    ring, feeder, woken = feeder_for(secondary)
    catch_ups = secondary.catch_ups
    newest = BASE_US + 5
    for first, count in ((6, 3), (9, 40), (49, 1)):
        batch = events(first, count)
        primary.append(batch, relay_cursor=first)
        assert feeder.feed_rows(*sent(newest, batch)) == count
        newest = batch[-1].time_us
    assert list(ring) == events(6, 44), "the very events, fields and bytes, in order"
    assert secondary.catch_ups == catch_ups and feeder.rows_fed == 44 and feeder.gaps_filled == 0
    assert woken == [BASE_US + 8, BASE_US + 48, BASE_US + 49]
    assert feeder.feed_rows(*sent(BASE_US + 48, events(49, 1))) == 0, "rows the ring holds are not appended twice"


def test_rows_after_missed_ones_fill_the_gap_from_the_log_first(logs):
    primary, secondary = logs
    ring, feeder, _ = feeder_for(secondary)
    primary.append(events(1, 10), relay_cursor=1)
    feeder.feed_rows(*sent(0, events(1, 10)))
    primary.append(events(11, 10), relay_cursor=11)  # its rows never reach this worker
    primary.append(events(21, 10), relay_cursor=21)  # nor these
    last = events(31, 10)
    primary.append(last, relay_cursor=31)
    feeder.feed_rows(*sent(BASE_US + 30, last))
    assert list(ring) == events(1, 40), "no gap, no duplicate"
    assert feeder.gaps_filled == 1 and feeder.rows_fed == 10


def test_a_log_read_below_the_ring_floor_first_brings_the_view_up_to_the_floor(logs):
    primary, secondary = logs
    ring, feeder, _ = feeder_for(secondary, capacity=20)
    newest = 0
    for first in range(1, 200, 10):  # 200 events through a 20-event ring; the view never caught up
        batch = events(first, 10)
        primary.append(batch, relay_cursor=first)
        feeder.feed_rows(*sent(newest, batch))
        newest = batch[-1].time_us
    assert ring.floor_time_us > secondary.hwm(), "the ring ran ahead of the view"
    position, received = BASE_US + 50, []
    while not ring.covers(position):
        batch = read_next_batch(position, ring, secondary, EventFilter((), ()), False, 10_000, 0)
        received += batch.payloads
        position = batch.position
    received += read_next_batch(position, ring, secondary, EventFilter((), ()), False, 10_000, 0).payloads
    assert received == [event.json for event in events(51, 150)], "below the floor, then the ring: every event once"
    assert secondary.floor_catch_ups == 1


@pytest.mark.parametrize("cut", [1, 5, 12, 13, 40, -1])
def test_a_rows_message_that_does_not_add_up_is_refused(cut):
    body = encode_rows(7, events(1, 3))[_HEADER.size:]
    with pytest.raises(ValueError):
        decode_rows(body[:cut] if cut > 0 else body + b"x")
