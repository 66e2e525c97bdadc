"""The cluster's parts one at a time: message layout, the apply step on a real RocksDB log,
and the lease and the publish fence against one real nats-server."""
from __future__ import annotations

import asyncio
import time

import pytest

from jetstream.cluster.applier import ApplyGap, StreamApplier
from jetstream.cluster.lease import Lease
from jetstream.cluster.natsserver import NatsCluster
from jetstream.cluster.publisher import FencedPublisher
from jetstream.cluster.wire import WireError, decode_batch, encode_batch, encoded_size
from jetstream.implementation import LiveRing
from jetstream.log.store import EventLog
from tests.corpus_events import event_from_line

BASE_TIME_US = 1_795_000_000_000_000


@pytest.fixture(scope="module")
def corpus_events(expected_v1_lines):
    return [event_from_line(line, BASE_TIME_US + i) for i, line in enumerate(expected_v1_lines)]


# -- wire -------------------------------------------------------------------------------------

def test_a_batch_survives_the_wire_byte_for_byte(corpus_events):
    data = encode_batch(corpus_events, 4242)
    assert len(data) == encoded_size(corpus_events)
    batch = decode_batch(data)
    assert batch.relay_cursor == 4242
    assert batch.events == corpus_events


def test_a_batch_without_cursor_or_events_round_trips():
    assert decode_batch(encode_batch([], None)) == (None, [])


@pytest.mark.parametrize("mangle", [
    lambda d: b"XXXX" + d[4:],  # not our layout
    lambda d: d[:-1],  # truncated
    lambda d: d + b"\0",  # trailing bytes
    lambda d: d[:7],  # shorter than the head
])
def test_a_mangled_message_is_a_wire_error(corpus_events, mangle):
    with pytest.raises(WireError):
        decode_batch(mangle(encode_batch(corpus_events[:5], 1)))


# -- the apply step ---------------------------------------------------------------------------

def test_applying_writes_events_cursor_and_sequence_in_one_batch_and_resumes_after_reopen(tmp_path, corpus_events):
    notified = []
    first, second = corpus_events[:100], corpus_events[100:]
    with EventLog(str(tmp_path / "log")) as event_log:
        ring = LiveRing(1000, floor_time_us=0)
        applier = StreamApplier(None, "s.batches", "s", event_log, ring, lambda: notified.append(1))
        applier.apply(1, encode_batch(first, 10))
        applier.apply(1, encode_batch(first, 10))  # redelivered: ignored
        applier.apply(2, encode_batch([], 11))  # frames without events still move the cursor
        with pytest.raises(ApplyGap):
            applier.apply(4, encode_batch(second, 12))  # 3 is missing and was never expired
        assert ring.newest_time_us == first[-1].time_us
        assert notified == [1]
    with EventLog(str(tmp_path / "log"), create=False) as event_log:
        assert (event_log.stream_seq(), event_log.relay_cursor(), event_log.hwm()) == (2, 11, first[-1].time_us)
        applier = StreamApplier(None, "s.batches", "s", event_log, LiveRing(1000, floor_time_us=0), lambda: None)
        assert applier.applied_seq == 2
        applier.apply(3, encode_batch(second, 12))
        rows = event_log.read_after(0, 10_000, compressed=False)
        assert [bytes(row.payload) for row in rows] == [event.json for event in corpus_events]
        zrows = event_log.read_after(0, 10_000, compressed=True)
        assert [bytes(row.payload) for row in zrows] == [event.zstd for event in corpus_events]


def test_a_bad_message_is_counted_and_skipped_not_fatal(tmp_path, corpus_events):
    with EventLog(str(tmp_path / "log")) as event_log:
        applier = StreamApplier(None, "s.batches", "s", event_log, LiveRing(100, floor_time_us=0), lambda: None)
        applier.apply(1, b"garbage")
        applier.apply(2, encode_batch(corpus_events[:3], 7))
        assert event_log.stream_seq() == 2 and event_log.relay_cursor() == 7


# -- lease and fence against a real nats-server ----------------------------------------------

@pytest.fixture(scope="module")
def one_nats(tmp_path_factory):
    cluster = NatsCluster(tmp_path_factory.mktemp("nats"), size=1).start()
    yield cluster
    cluster.stop()


async def _js(urls):
    import nats

    nc = await nats.connect(servers=urls)
    return nc, nc.jetstream()


def test_only_one_node_holds_the_lease_and_it_passes_on_after_the_ttl(one_nats):
    async def scenario():
        nc, js = await _js(one_nats.urls)
        try:
            kv = await js.create_key_value(bucket=f"lease_{time.monotonic_ns()}", ttl=1.0, history=1)
            first, second = Lease(kv, "first", 1.0), Lease(kv, "second", 1.0)
            assert await first.try_acquire(2) is True
            assert await second.try_acquire(2) is False
            assert await second.holder(2) == "first"
            assert await first.renew(2) is True
            await asyncio.sleep(2.5)  # first stops renewing: the key expires
            assert first.expired_locally()
            assert await second.try_acquire(2) is True
            assert await first.renew(2) is False, "a lapsed holder cannot renew over its successor"
            assert await second.holder(2) == "second"
            await second.release(2)
            assert await first.try_acquire(2) is True, "a released lease is free at once"
        finally:
            await nc.close()

    asyncio.run(scenario())


def test_a_deposed_leaders_publish_is_fenced_and_it_gives_up(one_nats, corpus_events):
    from nats.js.api import StreamConfig

    async def scenario():
        nc, js = await _js(one_nats.urls)
        try:
            stream = f"fence_{time.monotonic_ns()}"
            await js.add_stream(StreamConfig(name=stream, subjects=[f"{stream}.batches"]))
            failures = {"old": [], "new": []}
            old = FencedPublisher(js, f"{stream}.batches", stream, 0, failures["old"].append)
            new = FencedPublisher(js, f"{stream}.batches", stream, 0, failures["new"].append)
            old.start()
            new.start()
            new.submit(corpus_events[:10], 100)
            await _until(lambda: new.published_messages == 1)
            old.submit(corpus_events[10:20], 101)  # believes the stream still ends at 0
            old.submit(corpus_events[20:30], 102)
            await _until(lambda: old.failed)
            new.submit(corpus_events[30:40], 103)
            await _until(lambda: new.published_messages == 2)
            info = await js.stream_info(stream)
            cursors = [decode_batch((await js.get_msg(stream, seq)).data).relay_cursor for seq in (1, 2)]
            new.stop()
            return failures, old, info.state.last_seq, cursors
        finally:
            await nc.close()

    failures, old, last_seq, cursors = asyncio.run(scenario())
    assert failures == {"old": ["fenced"], "new": []}
    assert old.published_messages == 0 and old.queued_batches == 0, "nothing of the old leader got in"
    assert last_seq == 2 and cursors == [100, 103]


@pytest.fixture(scope="module")
def three_nats(tmp_path_factory):
    """The production shape: an R3 stream on 3 routed servers (the fence is checked by the stream
    leader against its proposals, the message id at apply)."""
    cluster = NatsCluster(tmp_path_factory.mktemp("nats3"), size=3).start()
    yield cluster
    cluster.stop()


async def _r3_stream(js, name: str) -> str:
    from nats.js.api import StorageType, StreamConfig
    from nats.js.errors import BadRequestError

    config = StreamConfig(name=name, subjects=[f"{name}.batches"], storage=StorageType.FILE, num_replicas=3)
    # The module's cluster is shared: a server an earlier test killed and restarted may still be
    # rejoining, and until it has, an R3 stream has "no suitable peers for placement" (10005).
    for _ in range(150):
        try:
            await js.add_stream(config)
            return f"{name}.batches"
        except BadRequestError as exc:
            if exc.err_code != 10005:
                raise
            await asyncio.sleep(0.2)
    await js.add_stream(config)
    return f"{name}.batches"


async def _stream_cursors(js, stream: str) -> list[int | None]:
    last = (await js.stream_info(stream)).state.last_seq
    return [decode_batch((await js.get_msg(stream, seq)).data).relay_cursor for seq in range(1, last + 1)]


def test_a_deposed_leader_with_batches_queued_keeps_what_was_acked_and_adds_nothing_after_the_fence(
        three_nats, corpus_events):
    """Another leader writes ONE message while this one has three batches ready, each its own
    message. The first is refused on sequence; the second would expect exactly the sequence
    the stream now has (why the publisher never has two in flight: see its docstring)."""
    async def scenario():
        nc, js = await _js(three_nats.urls)
        try:
            stream = f"pipe_{time.monotonic_ns()}"
            subject = await _r3_stream(js, stream)
            failures = {"old": [], "new": []}
            batch = corpus_events[:10]  # every batch alike: exactly one fits a message, so none merge
            old = FencedPublisher(js, subject, stream, 0, failures["old"].append,
                                  max_message_bytes=encoded_size(batch))
            old.start()
            old.submit(corpus_events[:10], 100)
            old.submit(batch, 101)
            await _until(lambda: old.published_messages == 2)
            # The new leader read the stream up to seq 2 and writes its first message.
            new = FencedPublisher(js, subject, stream, 2, failures["new"].append)
            new.start()
            new.submit(batch, 200)
            await _until(lambda: new.published_messages == 1)
            # The old leader, not yet aware, gets three more at once.
            for cursor in (102, 103, 104):
                old.submit(batch, cursor)
            await _until(lambda: old.failed)
            await asyncio.sleep(0.5)  # any late acceptance would show up in the stream now
            new.submit(batch, 201)
            await _until(lambda: new.published_messages == 2)
            cursors = await _stream_cursors(js, stream)
            new.stop()
            return failures, old, cursors
        finally:
            await nc.close()

    failures, old, cursors = asyncio.run(scenario())
    assert failures == {"old": ["fenced"], "new": []}
    assert cursors == [100, 101, 200, 201], "the old leader's acked messages kept, none after the new leader's"
    assert old.published_messages == 2 and old.queued_batches == 0


def test_a_graceful_stop_lets_the_publish_in_flight_be_answered_and_drops_the_queue(three_nats, corpus_events):
    """A publish cancelled after its bytes left still lands: the stream then holds a message the
    stopping leader never saw acked (a CI run's stopped leader was one message short of the stream).
    `finish_in_flight` waits for that answer instead, and publishes nothing queued behind it."""
    async def scenario():
        nc, js = await _js(three_nats.urls)
        try:
            stream = f"drain_{time.monotonic_ns()}"
            subject = await _r3_stream(js, stream)
            batch = corpus_events[:10]
            publisher = FencedPublisher(js, subject, stream, 0, lambda reason: None,
                                        max_message_bytes=encoded_size(batch))
            publisher.start()
            publisher.submit(batch, 100)
            publisher.submit(batch, 101)  # queued behind the first: dropped by the stop
            for _ in range(3):  # the publish task runs up to its ack wait: the request is out
                await asyncio.sleep(0)
            assert publisher.published_messages == 0
            answered = await publisher.finish_in_flight(5.0)
            publisher.submit(batch, 102)  # after the stop: taken by nobody
            await asyncio.sleep(0.3)
            return answered, publisher, await _stream_cursors(js, stream)
        finally:
            await nc.close()

    answered, publisher, cursors = asyncio.run(scenario())
    assert answered
    assert cursors == [100], "the publish in flight landed, nothing queued behind it or after the stop did"
    assert publisher.published_messages == 1 and publisher.expected_last_seq == 1, "and its ack was seen"
    assert publisher.queued_batches == 0


def test_batches_waiting_behind_a_publish_share_one_message_but_never_split_a_batch(corpus_events):
    publisher = FencedPublisher(None, "s", "s", 0, lambda reason: None,
                                max_message_bytes=encoded_size(corpus_events[:25]))
    publisher.submit(corpus_events[:10], 1)
    publisher.submit(corpus_events[10:20], None)
    publisher.submit(corpus_events[20:30], 3)
    events, cursor = publisher._next_message()
    assert (len(events), cursor) == (20, 1)
    events, cursor = publisher._next_message()
    assert (len(events), cursor) == (10, 3)


def test_one_batch_larger_than_a_message_is_split_with_the_cursor_on_its_last_part(corpus_events):
    publisher = FencedPublisher(None, "s", "s", 0, lambda reason: None,
                                max_message_bytes=encoded_size(corpus_events[:40]))
    publisher.submit(corpus_events, 9)
    parts = []
    while publisher.queued_batches:
        parts.append(publisher._next_message())
    assert len(parts) >= 3
    assert [event for events, _ in parts for event in events] == corpus_events
    assert [cursor for _, cursor in parts] == [None] * (len(parts) - 1) + [9]
    assert all(encoded_size(events) <= publisher.max_message_bytes for events, _ in parts)


async def _until(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


def test_the_stream_leaders_death_is_ridden_out_by_retrying_each_message_once_stored(tmp_path, corpus_events):
    """SIGKILL of the nats-server leading an R3 stream while a leader publishes: the publisher
    sends the unanswered message again under the same fence until a new stream leader (a raft
    election, 4-9 s in nats-server) takes it; it never gives up within its timeout, and the
    stream holds every batch exactly once, in order. Before, the first unanswered publish
    failed after its timeout and the node stepped down (a hand-over on top of the election)."""
    from jetstream.cluster.natsserver import stop_process

    cluster = NatsCluster(tmp_path / "nats", size=3).start()
    try:
        async def scenario():
            nc, js = await _js(cluster.urls)
            try:
                stream = "failover"
                subject = await _r3_stream(js, stream)
                failures: list[str] = []
                publisher = FencedPublisher(js, subject, stream, 0, failures.append, publish_timeout_s=20.0)
                publisher.start()
                leader = (await js.stream_info(stream)).cluster.leader
                victim = next(server for server in cluster.servers if server.name == leader)
                cursor, killed_at, resumed_s = 0, None, None
                published_at_kill = 0
                while cursor < 400:
                    cursor += 1
                    publisher.submit(corpus_events[cursor % len(corpus_events):][:1], cursor)
                    await asyncio.sleep(0.02)
                    if cursor == 50:
                        await asyncio.to_thread(stop_process, victim.process, 9)
                        killed_at, published_at_kill = time.monotonic(), publisher.published_messages
                    elif killed_at and resumed_s is None and publisher.published_messages > published_at_kill + 1:
                        resumed_s = time.monotonic() - killed_at
                await _until(lambda: publisher.published_events == cursor or publisher.failed, 30)
                publisher.stop()
                batches = [decode_batch((await js.get_msg(stream, seq)).data)
                           for seq in range(1, (await js.stream_info(stream)).state.last_seq + 1)]
                return failures, publisher, batches, resumed_s, cursor
            finally:
                await nc.close()

        failures, publisher, batches, resumed_s, sent = asyncio.run(scenario())
    finally:
        cluster.stop()
    print(f"stream leader killed: publishing resumed after {resumed_s}s, {publisher.retries} retries")
    assert failures == [], "the publisher rode out the election instead of giving up"
    assert publisher.retries >= 1
    cursors = [batch.relay_cursor for batch in batches]
    assert cursors == sorted(set(cursors)) and cursors[-1] == sent, "in order, none twice"
    assert sum(len(batch.events) for batch in batches) == sent, "every batch exactly once"
