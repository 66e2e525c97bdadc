"""The v2 zstd form made by the ring (both twins): ingest no longer makes it, the first compressed
v2 read of an event does, once, and every later reader (read_after or the fan-out) gets the same bytes.

Real parts: corpus events sequenced by our Sequencer (so their v2_zstd is b""), the shipped v2
dictionary's compressor, and zstd decoding of every payload a reader gets.
"""
from __future__ import annotations

import pytest

from jetstream._py import fanout as py_fanout
from jetstream._py import position as py_position
from jetstream._py import ring as py_ring
from jetstream.compression import EventCompressor, decompress
from jetstream.dictionary import active_v2_dictionary
from jetstream.events import KIND_SYNC
from jetstream.ingest.decode import decode_frame
from jetstream.ingest.sequencer import Sequencer
from tests.core.test_core_frames import parse_frames

try:
    from jetstream._core import fanout as cy_fanout
    from jetstream._core import position as cy_position
    from jetstream._core import ring as cy_ring
except ImportError:  # pragma: no cover - only when the extensions are not built
    cy_fanout = cy_position = cy_ring = None

V2_DICTIONARY = active_v2_dictionary()
TWINS = {"py": (py_ring, py_fanout, py_position), "cython": (cy_ring, cy_fanout, cy_position)}


@pytest.fixture(params=sorted(TWINS))
def twin(request):
    if TWINS[request.param][0] is None:
        pytest.skip("Cython core not built")
    return TWINS[request.param]


@pytest.fixture(scope="module")
def events(corpus_frames):
    pending = []
    for raw in corpus_frames[:120]:
        try:
            pending += decode_frame(raw).events
        except Exception:  # noqa: BLE001 - frames the decoder refuses yield nothing, as in the pipeline
            pass
    sequenced = Sequencer(0).sequence(pending, EventCompressor(None, V2_DICTIONARY))
    assert all(event.v2_zstd == b"" for event in sequenced)  # not made at ingest
    assert sum(1 for event in sequenced if event.v2) > 100
    return sequenced


class CountingCompressor:
    def __init__(self) -> None:
        self.compress_v2 = EventCompressor(None, V2_DICTIONARY).compress_v2
        self.frames: list[bytes] = []

    def __call__(self, frame: bytes) -> bytes:
        self.frames.append(frame)
        return self.compress_v2(frame)


def filled(twin, events, compress_v2):
    ring = twin[0].LiveRing(len(events) + 1, compress_v2=compress_v2)
    for event in events:
        ring.append(event)
    return ring


def read_all(ring, compressed: bool, v2: bool = True, max_events: int = 7) -> list[bytes]:
    position, payloads = ring.floor_time_us, []
    while position < ring.newest_time_us:
        got, position = ring.read_after(position, None, compressed, max_events, 1 << 20, 0, True, v2)
        payloads += got
    return payloads


def wanted_frames(events) -> list[bytes]:
    return [event.v2 for event in events if event.v2]


def test_the_first_compressed_reader_makes_each_form_once_and_later_readers_get_the_same_bytes(twin, events):
    compressor = CountingCompressor()
    ring = filled(twin, events, compressor)
    first = read_all(ring, compressed=True)
    assert [decompress(payload, V2_DICTIONARY) for payload in first] == wanted_frames(events)
    assert compressor.frames == wanted_frames(events) and ring.v2_zstd_made == len(first)
    second = read_all(ring, compressed=True, max_events=3)
    assert second == first and all(a is b for a, b in zip(first, second))  # held, not made again
    assert len(compressor.frames) == len(first)
    # the held form is what the ring hands out as the event's v2_zstd from now on
    assert [event.v2_zstd for event in ring if event.v2] == first


def test_readers_that_do_not_want_the_compressed_v2_form_never_make_it(twin, events):
    compressor = CountingCompressor()
    ring = filled(twin, events, compressor)
    assert read_all(ring, compressed=False) == wanted_frames(events)
    assert read_all(ring, compressed=True, v2=False) == [event.zstd for event in events if event.kind != KIND_SYNC]
    assert read_all(ring, compressed=False, v2=False) == [event.json for event in events if event.kind != KIND_SYNC]
    assert compressor.frames == [] and ring.v2_zstd_made == 0


def test_a_form_appended_with_the_event_is_served_as_given(twin, events):
    compressor = CountingCompressor()
    given = [event._replace(v2_zstd=b"given %d" % event.seq) if event.v2 else event for event in events]
    ring = filled(twin, given, compressor)
    assert read_all(ring, compressed=True) == [event.v2_zstd for event in given if event.v2]
    assert compressor.frames == [] and ring.v2_zstd_made == 0


def test_a_ring_without_a_compressor_skips_what_it_cannot_send_compressed(twin, events):
    ring = filled(twin, events, None)
    assert read_all(ring, compressed=True) == []
    assert read_all(ring, compressed=False) == wanted_frames(events)
    ring.compress_v2 = CountingCompressor()
    assert [decompress(payload, V2_DICTIONARY) for payload in read_all(ring, compressed=True)] == \
        wanted_frames(events)


def test_the_server_gives_its_ring_its_v2_compressor(tmp_path, twin):
    from jetstream.log.store import EventLog
    from jetstream.server.app import SubscribeServer

    ring = twin[0].LiveRing(16)
    with EventLog(str(tmp_path / "log")) as event_log:
        server = SubscribeServer(event_log, ring)
        assert ring.compress_v2 is server.compress_v2
        own = CountingCompressor()
        kept = twin[0].LiveRing(16, compress_v2=own)
        SubscribeServer(event_log, kept)
        assert kept.compress_v2 is own


class Owner:
    def position_conflict(self, start: int, new: int) -> None:
        raise AssertionError(f"conflict {start} -> {new}")


def test_the_fanout_makes_the_form_in_the_ring_once_for_all_its_compressed_v2_slots(twin, events):
    rings, fanouts, positions = twin
    compressor = CountingCompressor()
    ring = rings.LiveRing(len(events) + 1, floor_time_us=events[0].time_us - 1, compress_v2=compressor)
    fanout = fanouts.LiveFanout(max_events=len(events) + 1, max_bytes=1 << 24)
    written: list[list[bytes]] = [[], [], []]
    for index, (compressed, v2) in enumerate(((True, True), (True, True), (False, True))):
        slot = fanouts.LiveSlot(Owner(), positions.Position(ring.floor_time_us), written[index].append, None,
                                compressed, v2)
        slot.set_options(None, 0, True)
        fanout.join(slot)
    for start in range(0, len(events), 40):  # batches land, a pass serves every slot
        for event in events[start:start + 40]:
            ring.append(event)
        assert fanout.step(ring) == []
    payloads = [[payload for _, _, payload in parse_frames(b"".join(chunks))] for chunks in written]
    assert payloads[0] == payloads[1] and payloads[2] == wanted_frames(events)
    assert [decompress(payload, V2_DICTIONARY) for payload in payloads[0]] == wanted_frames(events)
    assert compressor.frames == wanted_frames(events) and ring.v2_zstd_made == len(payloads[0])
