"""An in-process stack whose history is out of the log: real RocksDB, real ingest, real sealer, real server.

Synthetic relay frames go through the real IngestPipeline into a real EventLog and a small LiveRing;
the real ArchiveSealer seals them into segments of a real archive directory; the log is then
trimmed (as the TTL trim would: only sealed events), and a SubscribeServer serves both wires with
the directory's ArchiveService as its archive. What a client received before the trim, from the
log, is the oracle for what it receives after it, from the archive.
"""
from __future__ import annotations

import asyncio
import json

from jetstream.archive.sealer import ArchiveSealer, SealerSettings
from jetstream.archive.xrpc import ArchiveService, ArchiveSettings
from jetstream.compression import EventCompressor
from jetstream.dictionary import active_dictionary, active_v2_dictionary
from jetstream.implementation import LiveRing
from jetstream.ingest.pipeline import IngestPipeline
from jetstream.ingest.sequencer import Sequencer
from jetstream.log.store import EventLog
from jetstream.relaysim.synthetic import SyntheticSource
from jetstream.server.app import SubscribeServer
from jetstream.server.settings import ServerSettings
from tests.archive.test_sealer import seal_all
from tests.server.server_helpers import V2_PATH  # noqa: F401 - the history tests import it from here
from tests.wsclient import connect


class HistoryStack:
    def __init__(self, tmp_path, *, ring_capacity: int = 64, block_events: int = 32, segment_bytes: int = 6_000,
                 **settings) -> None:
        self.tmp_path = tmp_path
        self.event_log = EventLog(str(tmp_path / "log"))
        self.ring = LiveRing(ring_capacity, floor_time_us=self.event_log.hwm())
        settings.setdefault("max_sub_rate", 10_000_000.0)
        settings.setdefault("zstd_dictionary", active_dictionary())
        self.server = SubscribeServer(self.event_log, self.ring, ServerSettings(**settings))
        self.archive_dir = tmp_path / "archive"
        self.sealer = ArchiveSealer(self.event_log, SealerSettings(
            str(self.archive_dir), block_events=block_events, block_seconds=1e9, segment_bytes=segment_bytes,
            seal_after_s=1e9, fsync=False))
        self.sealer.recover()
        self.source = SyntheticSource(seed=5, dids=40)
        self.relay_seq = self.source.first_seq - 1
        self.pipeline = IngestPipeline(self.event_log, self.ring, Sequencer(self.event_log.hwm()),
                                       EventCompressor(active_dictionary(), active_v2_dictionary()),
                                       self.server.notify_new_events, socket_url="test")
        self.service: ArchiveService | None = None

    async def start(self, archive: bool = True) -> HistoryStack:
        if archive:
            self.service = ArchiveService(ArchiveSettings(str(self.archive_dir),
                                                          cache_dir=str(self.tmp_path / "cache")))
            self.server.archive = self.service
            self.service.manifest.scan()
        await self.server.start("127.0.0.1", 0)
        return self

    def ingest(self, frames: int) -> int:
        batch = []
        for _ in range(frames):
            self.relay_seq = self.source.next_seq_after(self.relay_seq)
            batch.append(self.source.frame(self.relay_seq))
        return sum(self.pipeline.process(batch[i:i + 32]) for i in range(0, len(batch), 32))

    def seal(self) -> None:
        seal_all(self.sealer)
        if self.service is not None:
            self.service.manifest.scan()

    def trim_below_seq(self, seq: int) -> None:
        """Drop every event with a seq below `seq` from the log (they must be sealed, as the trim's hold says)."""
        time_us = self.event_log.time_us_of_seq(seq)
        assert time_us is not None and time_us <= self.sealer.hold_time_us()
        self.event_log.trim_older_than(time_us)
        assert self.event_log.oldest_seq() == seq

    def url(self, path: str, query: str = "") -> str:
        return f"ws://127.0.0.1:{self.server.port}{path}" + (f"?{query}" if query else "")

    async def collect(self, path: str, query: str, count: int, timeout: float = 30.0, settle_s: float = 0.3):
        """The first `count` payloads a client receives (and nothing more within settle_s)."""
        transport, client = await connect(self.url(path, query))
        try:
            await client.wait_for_count(count, timeout)
            await asyncio.sleep(settle_s)
            return list(client.payloads), client
        finally:
            transport.disconnect()

    async def stop(self) -> None:
        await self.server.close()
        if self.service is not None and self.service.cache is not None:
            self.service.cache.close()
        self.event_log.close()


def v2_event(frame: bytes) -> dict:
    """A v2 event frame's payload (kind = its $type's fragment)."""
    payload = json.loads(frame)["payload"]
    return dict(payload, kind=payload["$type"].rsplit("#", 1)[1])


def v2_seqs(payloads: list[bytes]) -> list[int]:
    return [v2_event(p)["seq"] for p in payloads]
