"""History on the live wire in a cluster (issue 24): a follower serves old cursors from the shared archive.

Real nats-server processes, two `jetstream serve --cluster` nodes sharing one S3 bucket (moto on
loopback) as in tests/cluster/test_cluster_archive.py (its helpers and fixtures, imported), relay-sim
streaming the whole time, a TTL of a few seconds so history leaves both logs. The follower, which
never sealed anything, answers `subscribeEvents?cursor=1` with every seq from 1, once, in order,
from the bucket's segments, then its own log, then live.
"""
from __future__ import annotations

import asyncio

import pytest

from tests.archive.s3_helpers import s3  # noqa: F401 - s3 is a fixture
from tests.archive.test_history_daemon import v2_until
from tests.archive.writer_helpers import SMALL
from tests.cluster.harness import wait_for
from tests.cluster.test_cluster_archive import archive_of, listed
from tests.cluster.test_cluster_nodes import rig, start_cluster  # noqa: F401 - rig is a fixture

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

SHORT_LOG = ("--event-ttl", "3s", "--ttl-trim-interval", "300ms", "--max-sub-rate", "1000000")


def test_a_follower_serves_cursor_1_from_the_shared_bucket_into_live(rig, s3):  # noqa: F811
    url = s3.url + "/follower-history"
    a, b = start_cluster(rig, rate=300, node_args=("--archive-url", url, *SMALL, *SHORT_LOG))
    wait_for(lambda: (archive_of(a).get("sealed_segments") or 0) >= 3 and len(listed(b)) >= 3,
             "three segments sealed by a and listed by b", 120, 0.2)
    wait_for(lambda: ((b.health() or {}).get("oldest_seq") or 0) > 300, "b's log to drop its first events", 120, 0.2)
    assert b.cluster().get("role") == "follower"
    newest = b.health()["newest_seq"]
    seqs = asyncio.run(v2_until(b.port, "cursor=1", newest + 300))  # past what existed at connect: live
    assert seqs[0] == 1 and seqs == list(range(1, len(seqs) + 1)), "every seq once, bucket -> log -> live"
    assert b.health()["oldest_seq"] > 300, "b's log did not hold the start: it came from the bucket"
