"""The atproto SDK, unchanged, reads the archive from a real `jetstream serve`.

Three sealed segments built from the corpus' relay frames sit in <data-dir>/archive; the daemon
runs as its own process; `JetstreamClient.snapshot()` must return exactly the events written, in
seq order, with and without filters, and fail clearly when a required key is wrong. Record CIDs
are checked against the CIDs the relay frames carried.
"""
from __future__ import annotations

import pytest
from atproto_client.exceptions import UnauthorizedError
from atproto_jetstream import JetstreamClient

from jetstream.archive import KIND_ACCOUNT, KIND_CREATE, KIND_DELETE, KIND_IDENTITY, KIND_SYNC, KIND_UPDATE
from tests.archive.serve_helpers import Serve, build_archive, corpus_archive_events

pytestmark = pytest.mark.timeout(180)

OPERATIONS = {KIND_CREATE: "create", KIND_UPDATE: "update", KIND_DELETE: "delete"}
PUBLIC_KIND = {KIND_CREATE: "commit", KIND_UPDATE: "commit", KIND_DELETE: "commit", KIND_IDENTITY: "identity",
               KIND_ACCOUNT: "account", KIND_SYNC: "sync"}
KEY = "s3cret-archive-key"


@pytest.fixture(scope="module")
def events():
    return corpus_archive_events()


@pytest.fixture(scope="module")
def served(tmp_path_factory, events):
    data_dir = tmp_path_factory.mktemp("serve") / "data"
    build_archive(data_dir / "archive", events, segments=3, block_events=8)
    server = Serve(data_dir)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def client(server: Serve, api_key: str = "any", **params) -> JetstreamClient:
    return JetstreamClient(params=params or None, base_uri=f"ws://127.0.0.1:{server.port}/xrpc", api_key=api_key)


def identity(message) -> tuple:
    """What a message says about its event: seq, did, kind, and for commits op, collection, rkey, rev."""
    commit = getattr(message, "operation", None)
    if commit is not None:
        return (message.seq, message.did, "commit", message.operation, message.collection, message.rkey, message.rev)
    return (message.seq, message.did, message.py_type.rsplit("#", 1)[-1])


def expected(events, kinds=None, dids=None, collections=None) -> list[tuple]:
    out = []
    for e in events:
        kind = PUBLIC_KIND[e.kind]
        if kinds and kind not in kinds:
            continue
        if dids and e.did not in dids:
            continue
        if collections and kind == "commit" and not any(
                e.collection == c or (c.endswith(".*") and e.collection.startswith(c[:-1])) for c in collections):
            continue
        if kind == "commit":
            out.append((e.seq, e.did, "commit", OPERATIONS[e.kind], e.collection, e.rkey, e.rev))
        else:
            out.append((e.seq, e.did, kind))
    return out


def test_snapshot_returns_exactly_the_events_written_in_seq_order(served, events):
    messages = list(client(served).snapshot())
    assert [identity(m) for m in messages] == expected(events)
    seqs = [m.seq for m in messages]
    assert seqs == sorted(seqs) and len(seqs) == len(set(seqs)) == len(events) == 152
    kinds = {PUBLIC_KIND[e.kind] for e in events}
    assert kinds == {"commit", "identity", "account"}  # what the corpus frames carry


def test_snapshot_record_cids_are_the_relay_frames_cids(served, events):
    import libipld

    from jetstream.framefile import read_frames
    from tests.archive.serve_helpers import FRAMES

    cids = {}
    for frame in read_frames(FRAMES):
        header, body = libipld.decode_dag_cbor_multi(frame)
        if header.get("t") == "#commit":
            for op in body.get("ops") or []:
                if op.get("cid") is not None:
                    cids[(body["repo"], op["path"])] = libipld.encode_cid(op["cid"]) if isinstance(
                        op["cid"], bytes) else str(op["cid"])
    messages = [m for m in client(served).snapshot() if getattr(m, "operation", None) in ("create", "update")]
    assert messages
    for m in messages:
        assert m.cid == cids[(m.did, f"{m.collection}/{m.rkey}")]


@pytest.mark.parametrize("params", [
    {"kinds": ["commit"]},
    {"kinds": ["identity", "account"]},
    {"collections": ["app.bsky.feed.like"]},
    {"collections": ["app.bsky.graph.*"], "kinds": ["commit"]},
])
def test_snapshot_with_kinds_and_collections_filters(served, events, params):
    got = [identity(m) for m in client(served, **params).snapshot()]
    want = expected(events, params.get("kinds"), None, params.get("collections"))
    assert got == want and want


def test_snapshot_with_a_dids_filter_plans_only_blocks_holding_them(served, events):
    dids = [events[10].did, events[120].did]
    got = [identity(m) for m in client(served, dids=dids).snapshot()]
    assert got == expected(events, dids=set(dids)) and got
    status, _, body = served.post_json("/xrpc/network.bsky.jetstream.planSnapshot", {"dids": dids})
    assert status == 200
    import json

    plan = json.loads(body)
    assert plan["stats"]["blocksMatched"] < plan["stats"]["segmentsExamined"] * 7  # blooms pruned blocks
    assert all(segment["mode"] == "blocks" for segment in plan["segments"])


def test_snapshot_bounds_after_and_before_seq(served, events):
    got = [identity(m) for m in client(served).snapshot(after_seq=40, before_seq=110)]
    assert got == [row for row in expected(events) if 40 < row[0] <= 110]


def test_paging_with_a_small_plan_max_entries_returns_the_same_events(tmp_path, events):
    data_dir = tmp_path / "data"
    build_archive(data_dir / "archive", events, segments=3, block_events=8)
    server = Serve(data_dir, "--plan-max-entries", "1", "--archive-api-key", KEY)
    try:
        server.wait_ready()
        dids = [events[5].did, events[60].did, events[140].did]
        got = [identity(m) for m in client(server, api_key=KEY, dids=dids).snapshot()]
        assert got == expected(events, dids=set(dids)) and got
        assert [identity(m) for m in client(server, api_key=KEY).snapshot()] == expected(events)
        with pytest.raises(UnauthorizedError) as refused:
            list(client(server, api_key="wrong").snapshot())
        assert refused.value.response.status_code == 401
        assert refused.value.response.content.error == "AuthRequired"
        status, _, body = server.post_json("/xrpc/network.bsky.jetstream.planSnapshot", {})
        assert status == 401 and b'"AuthRequired"' in body
    finally:
        server.stop()
