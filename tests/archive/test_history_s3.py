"""History on the live wire from `--archive-url` (issue 24): readers below the log replay segments from S3.

moto's S3 server on loopback (tests/archive/s3_helpers.py, the `s3` fixture), the in-process stack of
tests/server/history_helpers.py (real ingest, RocksDB, sealer, server, websockets): the sealed
segments are uploaded to the bucket, the server's archive service lists the bucket, and readers
below the log read blocks through the bounded range cache (archive/cache.py). The oracle is what
the same clients received from the log before it was trimmed.
"""
from __future__ import annotations

import pytest

from jetstream.archive.xrpc import ArchiveService, ArchiveSettings
from tests.archive.s3_helpers import s3  # noqa: F401 - s3 is a fixture
from tests.archive.test_store_s3 import upload
from tests.server.history_helpers import V2_PATH, HistoryStack, v2_seqs

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


async def test_replay_from_a_bucket_through_the_range_cache_equals_the_log(tmp_path, s3):  # noqa: F811
    stack = await HistoryStack(tmp_path).start(archive=False)
    try:
        count = stack.ingest(240)
        oracle_v2 = (await stack.collect(V2_PATH, "cursor=1", count))[0]
        v1_count = len(stack.event_log.read_after(0, 1 << 20, False))
        oracle_v1 = (await stack.collect("/subscribe", "cursor=0&includeSync=true", v1_count))[0]
        stack.seal()
        url = s3.url + "/history"
        names = upload(stack.archive_dir, url).list_segments()
        assert len(names) >= 3
        stack.service = ArchiveService(ArchiveSettings(url, cache_dir=str(tmp_path / "cache"),
                                                       cache_chunk_bytes=4096))
        stack.server.archive, stack.server._history = stack.service, None
        assert stack.service.cache is not None, "an object store is read through the cache"
        stack.service.manifest.scan()
        stack.trim_below_seq(int(count * 0.6))

        frames, client = await stack.collect(V2_PATH, "cursor=1", count)
        assert frames == oracle_v2 and client.close_code is None
        assert v2_seqs(frames) == list(range(1, count + 1))
        stats = stack.service.cache.stats
        assert stats.misses > 0 and stats.fetched_bytes > 0, "blocks were fetched from the bucket"
        payloads, _ = await stack.collect("/subscribe", "cursor=0&includeSync=true", v1_count)
        assert payloads == oracle_v1, "v1's exact bytes from the bucket"
        assert stats.hits > 0, "the second replay read blocks the first had cached"
        assert stack.server.history.blocks_read >= 2 * (int(count * 0.6) // 32)
    finally:
        await stack.stop()
