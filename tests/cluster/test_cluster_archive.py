"""The archive in a cluster (issue 24): nodes sharing one S3 bucket (moto's server on loopback).

Real nats-server processes (tests/cluster/harness.py), real `jetstream serve --cluster` nodes,
relay-sim, moto. Properties:
- two nodes serve the same archive: the atproto SDK's snapshot() and planSnapshot answer the
  same from either, and the snapshot is what the v1 log holds for that span;
- a new node fills its log window from the archive and the stream's tail: the same seqs and the
  same bytes (JSON, zstd, v2 record) as the leader's log, including events the stream no longer
  holds; a range neither holds is said (the cluster_bootstrap_gap problem and a gap record);
- kill -9 of the leader while it uploads a segment whose events are older than --event-ttl:
  the follower held them (its trim stops at the shared tip), the new leader seals them, the
  bucket holds every seq exactly once, and no torn object is ever listed or served;
- a follower that cannot read the tip holds its trim and says so (archive_tip_unreadable);
- without --archive-url each node seals its own log into its own directory, follower too: both
  logs trim past the TTL, each archive holds every seq once, the SDK's snapshot() and replay()
  give the same events from either node;
- a bootstrap killed mid-load (kill -9) resumes after the log's newest seq with no gap and no
  duplicate, and seqs its archive lacks are taken from the stream (the same bytes as the leader's).
Small segments (64-event blocks, sealed every 2 s) and short TTLs keep each scenario short.
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import threading
import time
import urllib.request

import pytest
from atproto_jetstream import JetstreamClient

from jetstream.archive import SegmentReader
from jetstream.archive.store import ObjectStore
from jetstream.cluster.natsserver import stop_process
from jetstream.log.store import EventLog, LogGap
from tests.archive.s3_helpers import TcpProxy, s3  # noqa: F401 - s3 is a fixture
from tests.archive.writer_helpers import SMALL
from tests.cluster.harness import read_seqs, wait_for
from tests.cluster.test_cluster_nodes import applied, rig, start_cluster  # noqa: F401 - rig is a fixture

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

STREAM = "jetstream_events"
SUBJECT = f"{STREAM}.batches"
PLAN = "/xrpc/network.bsky.jetstream.planSnapshot"
LIST = "/xrpc/network.bsky.jetstream.listSegments"


# -- what a node says ---------------------------------------------------------------------------

def archive_of(node) -> dict:
    return (node.health() or {}).get("archive") or {}


def problem_kinds(node) -> set[str]:
    return {p.get("kind") for p in (node.health() or {}).get("problems") or []}


def settled_tip(leader, timeout: float = 90.0) -> int:
    """After the relay stopped and the stream is applied: the leader's sealed tip once it is the log's newest
    seq (an empty log is all sealed: the trim keeps every unsealed event) with no active segment."""
    def sealed() -> int:
        health = leader.health() or {}
        report = health.get("archive") or {}
        tip, newest = report.get("sealed_tip_seq") or 0, health.get("newest_seq")
        return tip if tip and report.get("active_events") == 0 and newest in (None, tip) else 0
    tip = wait_for(sealed, f"{leader.name} to seal everything it holds", timeout, 0.2)
    time.sleep(1.0)
    assert sealed() == tip
    return tip


def all_applied(leader, *others, what: str, quiet_s: float = 1.0, timeout: float = 60.0) -> None:
    """After the relay stopped: every node applied the leader's last publish, and it was still the last
    `quiet_s` later (the leader's ingest may publish a batch it read before the relay went away)."""
    def caught_up():
        last = leader.cluster().get("stream_last_seq")
        return last if last and all(applied(n) == last for n in (leader, *others)) else None
    deadline, previous = time.monotonic() + timeout, None
    while (current := wait_for(caught_up, what, max(deadline - time.monotonic(), 0.1))) != previous:
        previous = current
        time.sleep(quiet_s)


def http(node, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{node.port}{path}", data=body, method=method,
                                     headers={"Content-Type": "application/json"} if body else {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - loopback
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def listed(node) -> list[str]:
    status, body = http(node, "GET", LIST + "?limit=1000")
    return [s["name"] for s in json.loads(body)["segments"]] if status == 200 else []


def sdk_rows(node) -> list[tuple]:
    client = JetstreamClient(base_uri=f"ws://127.0.0.1:{node.port}/xrpc", api_key="any")
    rows = []
    for m in client.snapshot():
        operation = getattr(m, "operation", None)
        if operation is not None:
            rows.append((m.seq, m.did, m.collection, m.rkey, getattr(m, "cid", None), m.rev))
        else:
            rows.append((m.seq, m.did, m.py_type.rsplit("#", 1)[-1], "", None, getattr(m, "rev", None)))
    return rows


# -- what a stopped node's log holds --------------------------------------------------------------

def log_columns(data_dir) -> dict[int, tuple]:
    """seq -> (time_us, JSON, zstd, v2 record) of every event the log holds, across recorded gaps."""
    out: dict[int, tuple] = {}
    with EventLog(str(data_dir), create=False) as event_log:
        columns = {}
        for key, compressed, v2 in (("json", False, False), ("zstd", True, False), ("v2", False, True)):
            rows, after = [], 0
            while True:
                try:
                    chunk = event_log.read_after(after, 100_000, compressed=compressed, v2=v2)
                except LogGap as gap:
                    after = gap.gap["to_time_us"]
                    continue
                if not chunk:
                    break
                rows += chunk
                after = chunk[-1].time_us
            columns[key] = rows
        for j, z, v in zip(columns["json"], columns["zstd"], columns["v2"], strict=True):
            assert j.seq == z.seq == v.seq
            out[j.seq] = (j.time_us, bytes(j.payload), bytes(z.payload), bytes(v.payload))
    return out


def log_sdk_rows(columns: dict[int, tuple], seqs) -> list[tuple]:
    """The SDK's tuple of each event, from the v1 JSON the log holds."""
    rows = []
    for seq in seqs:
        document = json.loads(columns[seq][1])
        if document["kind"] == "commit":
            commit = document["commit"]
            rows.append((seq, document["did"], commit["collection"], commit["rkey"], commit.get("cid"),
                         commit["rev"]))
        else:
            rows.append((seq, document["did"], document["kind"], "", None, None))
    return rows


def bucket_seqs(url: str) -> tuple[list[str], list[int]]:
    """(segment names, every seq of every segment in index order), each object verified as it is read."""
    store = ObjectStore(url)
    names = [obj.name for obj in store.list_segments()]
    seqs: list[int] = []
    for name in names:
        with SegmentReader.from_bytes(store.read(name)) as reader:  # checks the header checksum
            seqs += [e.seq for e in reader.iter_events()]
    return names, seqs


# -- the stream, from the test -------------------------------------------------------------------

def stream_call(rig_, action):
    """Run `action(js)` against the rig_'s NATS cluster."""
    async def run():
        import nats

        nc = await nats.connect(servers=rig_.nats.urls)
        try:
            return await action(nc.jetstream(timeout=10))
        finally:
            await nc.close()
    return asyncio.run(run())


def purge_below_message_holding(rig_, seq: int) -> int:
    """Drop the stream's messages before the one holding event `seq` (as if they had expired); that message."""
    from jetstream.cluster.wire import decode_batch

    async def action(js):
        info = await js.stream_info(STREAM)
        for message in range(info.state.first_seq, info.state.last_seq + 1):
            events = decode_batch((await js.get_msg(STREAM, message)).data).events
            if events and events[-1].seq >= seq:
                await js.purge_stream(STREAM, seq=message)
                return message
        raise AssertionError(f"no stream message holds seq {seq}")
    return stream_call(rig_, action)


def stream_event_seq(rig_, newest: bool = False) -> int:
    """The seq of the stream's first event (or its newest), 0 when it holds none."""
    from jetstream.cluster.wire import decode_batch

    async def action(js):
        info = await js.stream_info(STREAM)
        messages = range(info.state.first_seq, info.state.last_seq + 1)
        for message in (reversed(messages) if newest else messages):
            events = decode_batch((await js.get_msg(STREAM, message)).data).events
            if events:
                return events[-1 if newest else 0].seq
        return 0
    return stream_call(rig_, action)


def copy_bucket_to_directory(url: str, directory) -> int:
    """Every segment of the bucket now, as files (another node's view of an archive frozen here); its tip seq."""
    store = ObjectStore(url)
    os.makedirs(directory, exist_ok=True)
    tip = 0
    for obj in store.list_segments():
        data = store.read(obj.name)
        with open(os.path.join(directory, obj.name), "wb") as file:
            file.write(data)
        with SegmentReader.from_bytes(data) as reader:
            tip = max(tip, reader.header.max_seq)
    return tip


def stop_relay(rig_) -> None:
    stop_process(rig_.relay, signal.SIGTERM)


def directory_seqs(directory) -> list[int]:
    """Every seq of every segment file of an archive directory, in index order, each file verified."""
    seqs: list[int] = []
    for name in sorted(n for n in os.listdir(directory) if n.startswith("seg_") and n.endswith(".jss")):
        with SegmentReader.open(os.path.join(directory, name)) as reader:
            seqs += [e.seq for e in reader.iter_events()]
    return seqs


def sdk_replay_seqs(node, through_seq: int, timeout: float = 120.0) -> list[int]:
    """The seqs the SDK's replay() (archive, then the live wire) gives from `node` up to `through_seq`."""
    seqs: list[int] = []
    failure: list[BaseException] = []

    def run() -> None:
        client = JetstreamClient(base_uri=f"ws://127.0.0.1:{node.port}/xrpc", api_key="any", compress=False)
        try:
            for message in client.replay():
                seqs.append(message.seq)
                if message.seq >= through_seq:
                    break
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            failure.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not failure, failure
    return seqs


# -- the tests -----------------------------------------------------------------------------------

def test_two_nodes_sharing_a_bucket_answer_the_sdk_and_plans_the_same(rig, s3):  # noqa: F811
    url = s3.url + "/two-nodes"
    a, b = start_cluster(rig, rate=300, node_args=("--archive-url", url, *SMALL))
    wait_for(lambda: (archive_of(a).get("sealed_segments") or 0) >= 3, "three sealed segments", 120, 0.2)
    stop_relay(rig)
    all_applied(a, b, what="b to apply everything a published")
    tip = settled_tip(a)
    wait_for(lambda: listed(a) and listed(b) == listed(a), "b to list what a sealed", 30, 0.5)
    assert archive_of(b).get("role") == "following" and archive_of(b).get("sealed_tip_seq") == tip, \
        "the follower read the shared tip (its trim holds there)"

    from_a, from_b = sdk_rows(a), sdk_rows(b)
    assert len(from_a) == tip and [row[0] for row in from_a] == list(range(1, tip + 1))
    assert from_a == from_b, "the SDK's snapshot is the same from either node"

    for request in ({}, {"dids": [from_a[0][1]]}, {"collections": ["app.bsky.feed.like"]},
                    {"afterSeq": tip // 3, "beforeSeq": 2 * tip // 3}, {"kinds": ["identity", "account"]}):
        body = json.dumps(request).encode()
        status_a, plan_a = http(a, "POST", PLAN, body)
        status_b, plan_b = http(b, "POST", PLAN, body)
        assert status_a == status_b == 200, (request, plan_a, plan_b)
        assert json.loads(plan_a) == json.loads(plan_b), f"planSnapshot {request} answers the same from both"
        if not request:
            assert json.loads(plan_a)["sealedTipSeq"] == tip

    rig.stop_node(a)
    rig.stop_node(b)
    columns = log_columns(a.data_dir)
    assert from_a == log_sdk_rows(columns, range(1, tip + 1)), "the snapshot is what the v1 log holds"
    assert log_columns(b.data_dir) == columns


def test_a_new_node_fills_its_window_from_the_archive_and_the_stream_with_the_same_bytes(rig, s3, tmp_path):  # noqa: F811
    url = s3.url + "/bootstrap"
    a, = start_cluster(rig, rate=300, names=("a",), node_args=("--archive-url", url, *SMALL))
    wait_for(lambda: (archive_of(a).get("sealed_segments") or 0) >= 2, "two sealed segments", 120, 0.2)
    # d's archive: the bucket as it is now, frozen in a directory (its sealing "lags" from here on).
    frozen = tmp_path / "frozen-archive"
    frozen_tip = copy_bucket_to_directory(url, frozen)
    assert frozen_tip > 0
    # ...and a row it lacks (as archive.skipped leaves one), which the stream will no longer hold either.
    first_segment = sorted(n for n in os.listdir(frozen) if n.endswith(".jss"))[0]
    with SegmentReader.open(str(frozen / first_segment)) as reader:
        seqs = [e.seq for e in reader.iter_events()]
    lacked = seqs[len(seqs) // 2]
    drop_rows(frozen, first_segment, {lacked})
    wait_for(lambda: (archive_of(a).get("sealed_tip_seq") or 0) >= frozen_tip + 400, "a to seal on", 120, 0.2)
    # The stream loses what lies below a seq the bucket holds but the frozen copy does not.
    purged_below = purge_below_message_holding(rig, frozen_tip + 200)
    stream_first = stream_event_seq(rig)
    assert frozen_tip + 1 < stream_first <= archive_of(a)["sealed_tip_seq"]

    c = rig.add_node("c", "--archive-url", url, *SMALL)
    d = rig.add_node("d", "--archive-dir", str(frozen), *SMALL)
    for node in (c, d):
        wait_for(lambda n=node: (n.cluster().get("bootstrap") or {}).get("state") == "done",
                 f"{node.name} to bootstrap", 120, 0.2)
    boot_c, boot_d = c.cluster()["bootstrap"], d.cluster()["bootstrap"]
    assert boot_c["events"] >= stream_first - 1 and boot_c["start_message"] >= purged_below
    assert boot_c["hole"] is None and "cluster_bootstrap_gap" not in problem_kinds(c)
    # d: the archive ends at frozen_tip, the stream starts at stream_first: a hole, said.
    assert boot_d["hole"] and boot_d["hole"]["from_seq"] == frozen_tip + 1 and \
        boot_d["hole"]["to_seq"] == stream_first - 1
    assert "cluster_bootstrap_gap" in problem_kinds(d)
    assert (boot_d["not_in_archive"], boot_d["from_stream"], boot_d["missing"], boot_d["missing_seqs"]) == \
        (1, 0, 1, [lacked]), "the seq neither holds is counted and named"
    assert any(gap.get("reason") == "cluster_bootstrap" for gap in d.health().get("gaps") or [])
    time.sleep(2)  # live messages on top of the bootstrap
    stop_relay(rig)
    all_applied(a, c, d, what="c and d to apply everything")
    for node in (a, c, d):
        rig.stop_node(node)

    on_a, on_c, on_d = (log_columns(n.data_dir) for n in (a, c, d))
    newest = max(on_a)
    assert sorted(on_a) == list(range(1, newest + 1))
    assert on_c == on_a, "c holds every seq a holds, with the same time_us, JSON, zstd and v2 record"
    assert sorted(on_d) == [seq for seq in range(1, frozen_tip + 1) if seq != lacked] + \
        list(range(stream_first, newest + 1))
    assert on_d == {seq: row for seq, row in on_a.items() if seq in on_d}, "d: the same bytes, around its hole"
    c_log = c.log_path.read_text()
    assert "event=cluster_bootstrap_done" in c_log and f"event=cluster_apply_subscribed from_seq={boot_c['start_message']}" in c_log
    d_log = d.log_path.read_text()
    assert d_log.count("event=cluster_bootstrap_hole") == 1 and "event=cluster_apply_seq_jump" not in d_log, \
        "the hole is reported once (the applier knows the log records it)"
    assert "event=cluster_apply_after_recorded_gap" in d_log


class SlowUploadProxy(TcpProxy):
    """TcpProxy whose client-to-store direction runs at `bytes_per_s`: an upload takes seconds, and the
    test sees when one is under way (a PUT's request line went through, the connection still open)."""

    def __init__(self, target_port: int, bytes_per_s: int) -> None:
        super().__init__(target_port)
        self.bytes_per_s = bytes_per_s
        self.uploading = threading.Event()

    def _start_pumps(self, client: socket.socket, upstream: socket.socket) -> None:
        threading.Thread(target=self._slow_pump, args=(client, upstream), daemon=True).start()
        threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()

    def _slow_pump(self, source: socket.socket, sink: socket.socket) -> None:
        step = max(1024, self.bytes_per_s // 20)
        try:
            while data := source.recv(step):
                if data.startswith(b"PUT /"):
                    self.uploading.set()
                sink.sendall(data)
                time.sleep(len(data) / self.bytes_per_s)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


def test_kill9_of_the_leader_mid_upload_of_events_older_than_the_ttl_loses_and_doubles_nothing(rig, s3):  # noqa: F811
    url = s3.url + "/kill9"
    moto_port = int(s3.env["AWS_ENDPOINT_URL"].rsplit(":", 1)[1])
    proxy = SlowUploadProxy(moto_port, bytes_per_s=48_000)
    proxy.start()
    # Sealed every 6 s, uploaded at 48 kB/s, events kept 3 s: at the kill, the segment being uploaded
    # holds events the TTL trim of every log would have dropped, and the stream has dropped.
    args = ("--archive-url", url, "--event-ttl", "3s", "--archive-block-events", "64", "--archive-block-seconds",
            "1s", "--archive-seal-after", "6s")
    rig.start_nats()
    rig.start_relay("--synthetic", "true", "--rate", "250", "--seed", "11", "--dids", "200")
    a = rig.add_node("a", "--override-relay-cursor", "0", *args,
                     env={"AWS_ENDPOINT_URL": f"http://127.0.0.1:{proxy.port}"})
    wait_for(lambda: a.cluster().get("role") == "leader", "a to lead", 30)
    b = rig.add_node("b", *args)
    wait_for(lambda: archive_of(a).get("sealed_segments", 0) >= 1, "a's first upload", 90, 0.2)
    proxy.uploading.clear()
    seen_listed: set[str] = set()
    wait_for(lambda: proxy.uploading.is_set() or seen_listed.update(listed(b)), "a to upload again", 60, 0.05)
    time.sleep(0.5)
    a.process.send_signal(signal.SIGKILL)
    a.process.wait(10)
    wait_for(lambda: b.cluster().get("role") == "leader", "b to lead", 30)
    wait_for(lambda: archive_of(b).get("role") == "sealing", "b's sealer to take over", 10)
    wait_for(lambda: seen_listed.update(listed(b)) or (archive_of(b).get("sealed_segments") or 0) >= 2,
             "b to seal", 90, 0.2)
    stop_relay(rig)
    all_applied(b, what="b to apply its own last publish")
    tip = settled_tip(b)
    seen_listed.update(listed(b))
    report = archive_of(b)
    rig.stop_node(b)
    proxy.stop()

    with EventLog(str(b.data_dir), create=False) as event_log:
        newest_seq = event_log.newest_seq()
    names, seqs = bucket_seqs(url)
    assert seen_listed <= set(names)
    assert report["missing"] == 0, "the new leader's log held every event a had not sealed"
    assert tip == newest_seq and seqs == list(range(1, newest_seq + 1)), \
        "every event b applied is in the bucket, in exactly one segment"
    assert "event=archive_segment_sealed" in a.log_path.read_text(), "a sealed before it was killed"


def test_a_follower_that_cannot_read_the_tip_holds_its_trim_and_says_so(s3, tmp_path, monkeypatch):  # noqa: F811
    """A follower's sealer (may_seal False) against the bucket through a proxy the test closes: its trim
    keeps every event above the last tip it read, a follower that never read one trims nothing, and
    after TIP_UNREADABLE_AFTER_S it raises archive_tip_unreadable, which ends at the next read."""
    from jetstream.archive import sealer as sealer_module
    from jetstream.archive.sealer import ArchiveSealer, ObjectArchiveStore, SealerSettings
    from jetstream.health import Problems
    from jetstream.log.ttl import TtlTrimmer
    from tests.archive.test_sealer import ingest, seal_all

    url = s3.url + "/follower"
    monkeypatch.setattr(sealer_module, "FOLLOW_EVERY_S", 0.0)
    monkeypatch.setattr(sealer_module, "TIP_UNREADABLE_AFTER_S", 0.0)
    moto_port = int(s3.env["AWS_ENDPOINT_URL"].rsplit(":", 1)[1])
    proxy = TcpProxy(moto_port)
    proxy.start()

    def follower_of(event_log, problems) -> ArchiveSealer:
        with monkeypatch.context() as env:  # obstore reads the endpoint when the store is made
            env.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{proxy.port}")
            store = ObjectArchiveStore(url, str(tmp_path / "staging-follower"), ObjectStore(url))
        return ArchiveSealer(event_log, SealerSettings(str(tmp_path / "staging-follower"), url=url), store=store,
                             problems=problems, may_seal=lambda: False)

    def oldest_after_trim(event_log, follower) -> int | None:
        # Every event is "older than the TTL" for this trimmer: only the hold keeps any.
        TtlTrimmer(event_log, 1.0, 1.0, clock_s=lambda: time.time() + 3600,
                   hold_time_us=follower.hold_time_us).trim_once()
        return event_log.oldest_seq()

    try:
        with EventLog(str(tmp_path / "log")) as event_log:
            leader = ArchiveSealer(event_log, SealerSettings(str(tmp_path / "staging-leader"), block_events=32,
                                                             block_seconds=1e9, segment_bytes=1 << 40,
                                                             seal_after_s=1e9, url=url))
            ingest(event_log, frames=200, seed=3)
            leader.recover()
            seal_all(leader)
            first_tip = leader.tip.seq
            ingest(event_log, frames=200, seed=4)
            newest = event_log.newest_seq()
            assert 0 < first_tip < newest

            problems = Problems()
            follower = follower_of(event_log, problems)
            asyncio.run(follower._follow())  # noqa: SLF001 - one follow step, as run() does
            assert follower.tip.seq == first_tip and follower.report()["role"] == "following"
            assert oldest_after_trim(event_log, follower) == first_tip + 1, "trimmed up to the tip, not past it"

            proxy.stop()
            seal_all(leader)  # the leader seals on; the follower cannot see it
            assert leader.tip.seq == newest
            asyncio.run(follower._follow())  # noqa: SLF001
            assert follower.tip_read_failures >= 1 and problems.is_active("archive_tip_unreadable")
            assert oldest_after_trim(event_log, follower) == first_tip + 1, "held at the last tip it read"
            never_read = follower_of(event_log, Problems())
            asyncio.run(never_read._follow())  # noqa: SLF001
            assert never_read.tip is None and never_read.hold_time_us() == 0
            assert oldest_after_trim(event_log, never_read) == first_tip + 1, "no tip known: nothing trimmed"

            proxy.start()
            asyncio.run(follower._follow())  # noqa: SLF001
            assert follower.tip.seq == newest and not problems.is_active("archive_tip_unreadable")
            assert oldest_after_trim(event_log, follower) is None, "every event sealed: all trimmed"
    finally:
        proxy.stop()


def test_with_their_own_archives_every_node_seals_and_trims_its_own_log_and_serves_the_same_history(rig):  # noqa: F811
    """No --archive-url: each node seals its own log into <data-dir>/archive (the follower too), so
    each node's TTL trim moves with its own tip and its log stays bounded; each archive is complete,
    and the SDK gets the same events from either node (segment boundaries may differ)."""
    ttl_s = 4
    a, b = start_cluster(rig, rate=200, node_args=(*SMALL, "--event-ttl", f"{ttl_s}s"))
    started = time.monotonic()
    wait_for(lambda: all((archive_of(n).get("sealed_segments") or 0) >= 3 for n in (a, b)),
             "both nodes to seal segments of their own", 120, 0.2)
    assert archive_of(b).get("role") == "sealing" and b.cluster().get("role") == "follower"
    # Past the TTL several times over: both logs trim up to their own tips.
    wait_for(lambda: time.monotonic() - started > 8 * ttl_s and all(
        ((n.health() or {}).get("oldest_seq") or 0) > 1 for n in (a, b)), "both logs to trim", 120, 0.5)
    for node in (a, b):
        health = node.health()
        held_s = (health["newest_time_us"] - health["oldest_time_us"]) / 1e6
        assert held_s < 4 * ttl_s, f"{node.name}'s log is bounded by the TTL: holds {held_s:.1f}s of events"
    stop_relay(rig)
    all_applied(a, b, what="b to apply everything a published")
    tip = settled_tip(a)
    assert settled_tip(b) == tip, "b sealed everything it applied"

    status_a, plan_a = http(a, "POST", PLAN, b"{}")
    status_b, plan_b = http(b, "POST", PLAN, b"{}")
    assert status_a == status_b == 200 and json.loads(plan_a)["sealedTipSeq"] == json.loads(plan_b)["sealedTipSeq"] == tip
    from_a, from_b = sdk_rows(a), sdk_rows(b)
    assert [row[0] for row in from_a] == list(range(1, tip + 1))
    assert from_a == from_b, "the SDK's snapshot is the same from either node"
    assert sdk_replay_seqs(a, tip) == sdk_replay_seqs(b, tip) == list(range(1, tip + 1))

    rig.stop_node(a)
    rig.stop_node(b)
    for node in (a, b):
        archived = directory_seqs(node.data_dir / "archive")
        assert archived == list(range(1, tip + 1)), f"{node.name}'s archive holds every seq exactly once"
        in_log = [seq for seq, _ in read_seqs(node.data_dir)]
        assert not in_log or (in_log[0] > 1 and in_log[-1] == tip), f"{node.name}'s log trimmed"
        assert sorted(set(archived) | set(in_log)) == list(range(1, tip + 1))
    text_b = b.log_path.read_text()
    assert "event=archive_segment_sealed" in text_b and "event=archive_followed_tip" not in text_b


def drop_rows(directory, name: str, seqs: set[int]) -> None:
    """Write segment `name` again without the events `seqs` (as rows the sealer could not hold leave it)."""
    from jetstream.archive.writer import SegmentOptions, SegmentWriter

    path = os.path.join(directory, name)
    with SegmentReader.open(path) as reader:
        events = [event for event in reader.iter_events() if event.seq not in seqs]
        first_seq = reader.header.min_seq
    assert events and len(events) < reader.header.event_count
    writer = SegmentWriter(path + ".rewrite", first_seq, SegmentOptions(block_events=64, fsync=False))
    for event in events:
        writer.add(event)
    os.replace(writer.finish().path, path)


def test_a_bootstrap_killed_mid_load_resumes_with_no_gap_and_takes_what_the_archive_lacks_from_the_stream(
        rig, s3, tmp_path):  # noqa: F811
    url = s3.url + "/resume"
    a, = start_cluster(rig, rate=1000, names=("a",), node_args=("--archive-url", url, *SMALL))
    wait_for(lambda: (archive_of(a).get("sealed_tip_seq") or 0) >= 25_000, "a to seal 25,000 events", 240, 0.5)
    # c's archive: the bucket now, with rows missing from two segments (the stream still holds them).
    copy = tmp_path / "copy-archive"
    copy_tip = copy_bucket_to_directory(url, copy)
    names = sorted(n for n in os.listdir(copy) if n.endswith(".jss"))
    dropped: set[int] = set()
    for name in (names[1], names[-2]):
        with SegmentReader.open(str(copy / name)) as reader:
            seqs = [e.seq for e in reader.iter_events()]
        middle = seqs[len(seqs) // 2]
        drop_rows(copy, name, {middle, middle + 1, middle + 2} if name == names[1] else {middle})
        dropped |= {middle, middle + 1, middle + 2} if name == names[1] else {middle}

    c = rig.add_node("c", "--archive-dir", str(copy), *SMALL)
    wait_for(lambda: (c.cluster().get("bootstrap") or {}).get("state") == "loading" and
             c.cluster()["bootstrap"]["events"] >= 2048, "c to be loading its window", 60, 0.02)
    c.process.send_signal(signal.SIGKILL)
    c.process.wait(10)
    with EventLog(str(c.data_dir), create=False) as event_log:
        killed_at = event_log.newest_seq()
        assert event_log.bootstrap_pending() and event_log.stream_seq() == 0
    assert 0 < killed_at < copy_tip, "killed mid-load"

    rig.start_node(c)
    wait_for(lambda: (c.cluster().get("bootstrap") or {}).get("state") == "done", "c to finish its bootstrap", 120, 0.2)
    boot = c.cluster()["bootstrap"]
    assert boot["missing"] == 0 and boot["missing_seqs"] == []
    resumed_dropped = {seq for seq in dropped if seq > killed_at}
    assert resumed_dropped, "the resumed run met rows the archive lacks"
    assert boot["not_in_archive"] == boot["from_stream"] == len(resumed_dropped)
    stop_relay(rig)
    all_applied(a, c, what="c to apply everything")
    rig.stop_node(a)
    rig.stop_node(c)

    on_a, on_c = log_columns(a.data_dir), log_columns(c.data_dir)
    assert sorted(on_a) == list(range(1, max(on_a) + 1))
    assert on_c == on_a, "c holds every seq exactly once, the dropped ones too, with the same bytes"
    text = c.log_path.read_text()
    assert f"after_seq={killed_at} " in text, "the second run resumed after the log's newest seq"
    assert "event=cluster_apply_seq_jump" not in text
