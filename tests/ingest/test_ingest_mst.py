"""MST path lookup (v1's rr.GetRecordBytes walk), both twins: on repo.car every record goat
listed resolves to goat's CID; absent keys, missing and bad nodes give their reasons; the
Cython reader agrees with the reference on real, edited, fuzzed and randomly built trees;
and commit_events with a reader drops exactly the ops v1 dropped."""
from __future__ import annotations

import libipld
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jetstream._core import commit as fast_commit
from jetstream._core import mst as fast
from jetstream._py import commit as ref_commit
from jetstream._py import mst as ref
from jetstream.ingest.car import read_car
from jetstream.ingest.decode import decode_frame
from jetstream.ingest.frames import split_frame
from jetstream.relaysim.synthetic import SyntheticSource
from tests.ingest.test_ingest_helpers import CID, build_mst, cid_for, cid_from_string, dag_cbor, mst_node

pytestmark = pytest.mark.timeout(120)
TWINS = pytest.mark.parametrize("module", [ref, fast], ids=["reference", "cython"])
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), database=None)


def lookup(module, blocks, root: bytes, path: str):
    """The leaf CID, or the MstError reason."""
    try:
        return module.MstReader(blocks, root).get(path)
    except ref.MstError as err:
        return err.reason


@pytest.fixture(scope="module")
def repo(corpus_dir):
    """(blocks as a dict, data root, {path: expected CID}) of repo.car."""
    car = read_car((corpus_dir / "repo.car").read_bytes())
    blocks = {cid: bytes(block) for cid, block in car.blocks.items()}
    root = libipld.decode_dag_cbor(blocks[car.roots[0]])["data"]
    expected = {}
    for line in (corpus_dir / "car_expected_records.tsv").read_text().splitlines():
        path, cid_text = line.split("\t")
        expected[path] = bytes(cid_from_string(cid_text))
    assert len(expected) == 23
    return blocks, root, expected


def node_cids_on_path(blocks, root: bytes, path: str) -> list[bytes]:
    reader = ref.MstReader(blocks, root)
    reader.get(path)
    return list(reader.nodes)


@TWINS
def test_every_record_goat_listed_resolves_to_its_cid(module, repo):
    blocks, root, expected = repo
    reader = module.MstReader(blocks, root)  # one reader: later lookups reuse cached nodes
    assert {path: reader.get(path) for path in expected} == expected


@TWINS
@pytest.mark.parametrize("path", ["app.bsky.feed.like/zzzzzzzzzzzzz", "app.bsky.actor.profile/selg", "a/b",
                                  "zzz.last/key", "app.bsky.feed.post/3"])
def test_a_path_not_in_the_repo_is_not_found(module, repo, path):
    blocks, root, _ = repo
    assert lookup(module, blocks, root, path) == "not_found"


@TWINS
def test_a_removed_node_block_is_a_missing_node_for_paths_below_it_only(module, repo):
    blocks, root, expected = repo
    deep = max(expected, key=lambda path: len(node_cids_on_path(blocks, root, path)))
    removed = node_cids_on_path(blocks, root, deep)[-1]
    assert removed != root
    pruned = {cid: block for cid, block in blocks.items() if cid != removed}
    results = {path: lookup(module, pruned, root, path) for path in expected}
    below = {path for path in expected if removed in node_cids_on_path(blocks, root, path)}
    assert deep in below and len(below) < len(expected)
    assert results == {path: "missing_node" if path in below else cid for path, cid in expected.items()}
    assert lookup(module, {}, root, deep) == "missing_node"


def reroot_with_changed_entry(blocks, root: bytes, path: str, change) -> tuple[dict, bytes]:
    """A copy of the repo where `change(entry)` edits the entry of `path`, every node re-hashed to the root."""
    chain = node_cids_on_path(blocks, root, path)
    blocks = dict(blocks)
    replaced = None  # (old CID, new CID) of the node below
    for cid in reversed(chain):
        node = libipld.decode_dag_cbor(blocks[cid])
        key = b""
        for entry in node["e"]:
            key = key[:entry["p"]] + entry["k"]
            if replaced is None and key == path.encode():
                change(entry)
        if replaced is not None:
            node["l"] = replaced[1] if node["l"] == replaced[0] else node["l"]
            for entry in node["e"]:
                entry["t"] = replaced[1] if entry["t"] == replaced[0] else entry["t"]
        block = dag_cbor(as_links(node))
        replaced = (cid, bytes(cid_for(block)))
        blocks[replaced[1]] = block
    return blocks, replaced[1]


def as_links(node: dict) -> dict:
    """A decoded node with its CIDs marked for the test encoder."""
    link = lambda value: None if value is None else CID(value)  # noqa: E731
    return {"l": link(node["l"]), "e": [dict(entry, v=CID(entry["v"]), t=link(entry["t"])) for entry in node["e"]]}


@TWINS
def test_a_corrupted_entry_cid_is_what_the_lookup_returns_so_it_mismatches_op_cid(module, repo):
    blocks, root, expected = repo
    path = "app.bsky.feed.like/3lrtfauocr722"
    wrong = bytes(cid_for(b"some other record"))
    edited, new_root = reroot_with_changed_entry(blocks, root, path, lambda entry: entry.update(v=wrong))
    assert new_root != root and len(node_cids_on_path(blocks, root, path)) > 1
    assert lookup(module, edited, new_root, path) == wrong
    others = {p: lookup(module, edited, new_root, p) for p in expected if p != path}
    assert others == {p: cid for p, cid in expected.items() if p != path}


@TWINS
def test_node_bytes_are_read_as_they_are_block_hashes_are_the_car_readers_rule(module, repo):
    """Like v1's MST code; v1's CAR reader (verify_all_blocks) is what rejects a bad hash."""
    blocks, root, expected = repo
    path = next(iter(expected))
    leaf_node = node_cids_on_path(blocks, root, path)[-1]
    tampered = dict(blocks)
    tampered[leaf_node] = blocks[leaf_node].replace(expected[path][-8:], bytes(8))
    assert lookup(module, tampered, root, path) == expected[path][:-8] + bytes(8)


@TWINS
def test_an_invalid_key_in_a_node_breaks_every_lookup_through_that_node(module):
    """indigo validated every key of a node it loaded: a bad rkey broke its neighbours in v1,
    https://github.com/bluesky-social/jetstream-legacy/issues/54."""
    record = bytes(cid_for(b"r"))
    node = mst_node([(b"app.bsky.feed.like/a", record, None), (b"app.bsky.feed.like/b b", record, None),
                     (b"app.bsky.feed.like/c", record, None)])
    blocks = {bytes(cid_for(node)): node}
    for path in ("app.bsky.feed.like/a", "app.bsky.feed.like/c", "app.bsky.feed.like/z"):
        assert lookup(module, blocks, bytes(cid_for(node)), path) == "bad_node"


@TWINS
def test_a_node_linking_to_itself_or_a_chain_deeper_than_any_repo_is_a_bad_node(module):
    """Node bytes are not hashed, so a CAR can hold a cycle; the walk gives up after MAX_DEPTH levels."""
    looping_cid = bytes(cid_for(b"the node below"))
    looping = mst_node([(b"b/b", looping_cid, None)], left=looping_cid)
    assert lookup(module, {looping_cid: looping}, looping_cid, "a/a") == "bad_node"
    record = bytes(cid_for(b"r"))
    bottom = mst_node([(b"a/a", record, None)])
    blocks, tops = {bytes(cid_for(bottom)): bottom}, [bytes(cid_for(bottom))]  # tops[i]: i + 1 levels
    for _ in range(ref.MAX_DEPTH):
        node = mst_node([(b"b/b", record, None)], left=tops[-1])
        blocks[bytes(cid_for(node))] = node
        tops.append(bytes(cid_for(node)))
    assert lookup(module, blocks, tops[ref.MAX_DEPTH - 1], "a/a") == record
    assert lookup(module, blocks, tops[ref.MAX_DEPTH], "a/a") == "bad_node"


@TWINS
@pytest.mark.parametrize("node", [
    dag_cbor({"e": []}),  # no "l"
    dag_cbor({"l": None, "e": [{"p": 1, "k": b"a/b", "v": CID(cid_for(b"r")), "t": None}]}),  # p past the last key
    dag_cbor({"l": None, "e": [{"p": 0, "k": b"a/b", "v": None, "t": None}]}),  # no value
    dag_cbor([1, 2]),
    b"\xa2\x61e\x80",  # truncated
])
def test_a_malformed_node_is_a_bad_node(module, node):
    assert lookup(module, {bytes(cid_for(node)): node}, bytes(cid_for(node)), "a/b") == "bad_node"


@TWINS
def test_a_non_canonical_but_valid_node_is_still_walked(module):
    """An extra field makes the Cython scan hand the node to the reference decoder."""
    record = bytes(cid_for(b"r"))
    node = dag_cbor({"l": None, "x": 1, "e": [{"p": 0, "k": b"a/b", "v": CID(record), "t": None}]})
    blocks = {bytes(cid_for(node)): node}
    reader = module.MstReader(blocks, bytes(cid_for(node)))
    assert reader.get("a/b") == record
    assert reader.get("a/b") == record  # from the cache
    assert lookup(module, blocks, bytes(cid_for(node)), "a/c") == "not_found"


keys = st.builds(lambda collection, rkey: f"{collection}/{rkey}",
                 st.sampled_from(["app.bsky.feed.like", "app.bsky.feed.post", "a", "com.example.x-y", "z"]),
                 st.text("abcdefghijklmnopqrstuvwxyz234567:._~-", min_size=1, max_size=14))


@FUZZ
@given(st.sets(keys, max_size=120), st.lists(keys, max_size=10))
def test_random_trees_every_key_resolves_in_both_twins_and_absent_keys_are_not_found(present, probes):
    records = {key.encode(): bytes(cid_for(key.encode())) for key in present}
    root, node_blocks = build_mst(records)
    blocks = {bytes(cid): block for cid, block in node_blocks}
    readers = [fast.MstReader(blocks, bytes(root)), ref.MstReader(blocks, bytes(root))]
    for key in sorted(present) + probes:
        want = records.get(key.encode(), "not_found")
        for reader in readers:
            try:
                got = reader.get(key)
            except ref.MstError as err:
                got = err.reason
            assert got == want, key


@FUZZ
@given(st.data())
def test_twins_agree_on_fuzzed_nodes(repo, data):
    """Random byte edits of a real node (re-hashed, so the walk reads them) give the same answer."""
    blocks, root, expected = repo
    path = data.draw(st.sampled_from(sorted(expected) + ["app.bsky.feed.like/3lz", "a/b"]))
    raw = bytearray(blocks[root])
    for _ in range(data.draw(st.integers(1, 3))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        del raw[data.draw(st.integers(0, len(raw) - 1)):]
    edited = dict(blocks)
    new_root = bytes(cid_for(bytes(raw)))
    edited[new_root] = bytes(raw)
    assert lookup(fast, edited, new_root, path) == lookup(ref, edited, new_root, path)


# ---------------------------------------------------------------------------
# commit_events with a reader (decode_frame(verify_mst=True))
# ---------------------------------------------------------------------------

def commit_parts(frame: bytes):
    _, body = split_frame(frame)
    car = read_car(body["blocks"])
    root = libipld.decode_dag_cbor(bytes(car.blocks[car.roots[0]]))["data"]
    return body, car.blocks, root


def run_commit(commit_module, mst_module, body, blocks, root):
    events, drops = [], []
    commit_module.commit_events(body["repo"], body["rev"], body["ops"], blocks, events, drops,
                                mst_module.MstReader(blocks, root))
    return events, drops


def test_corpus_commits_pass_the_mst_check_in_both_twins(corpus_frames):
    checked = 0
    for frame in corpus_frames:
        if split_frame(frame)[0].get("t") != "#commit":
            continue
        body, blocks, root = commit_parts(frame)
        fast_result = run_commit(fast_commit, fast, body, blocks, root)
        assert fast_result == run_commit(ref_commit, ref, body, blocks, root)
        assert fast_result[1] == []
        checked += sum(op["action"] != "delete" for op in body["ops"])
    assert checked > 100


def test_an_op_whose_cid_is_not_its_mst_leaf_is_dropped_and_its_neighbours_kept(corpus_frames):
    for frame in corpus_frames:
        if split_frame(frame)[0].get("t") != "#commit":
            continue
        body, blocks, root = commit_parts(frame)
        creates = [op for op in body["ops"] if op["action"] == "create"]
        if not creates:
            continue
        other = next(cid for cid in blocks.keys() if cid != creates[0]["cid"] and cid != root)
        creates[0]["cid"] = other  # names a real block of the CAR, just not the leaf
        for commit_module, mst_module in ((ref_commit, ref), (fast_commit, fast)):
            events, drops = run_commit(commit_module, mst_module, body, blocks, root)
            assert [reason for reason, _ in drops] == ["mst_cid_mismatch"]
            assert len(events) == len(body["ops"]) - 1
        return
    pytest.fail("no corpus create")


def test_synthetic_frames_pass_verify_mst_with_no_drops():
    source = SyntheticSource(seed=11, dids=50)
    creates_and_updates = events = 0
    for seq in range(1, 3001):
        frame = source.frame(seq)
        decoded = decode_frame(frame, verify_mst=True)
        assert decoded.drops == []
        assert decoded.events == decode_frame(frame).events
        events += len(decoded.events)
        if decoded.frame_type == "#commit":
            creates_and_updates += sum(op["action"] != "delete" for op in split_frame(frame)[1]["ops"])
    assert creates_and_updates > 2500 and events > 2900


def test_a_commit_whose_signed_commit_has_no_data_link_is_a_bad_car_only_with_verify_mst():
    from tests.ingest.test_ingest_helpers import car_bytes, frame

    record = dag_cbor({"$type": "app.bsky.feed.like", "createdAt": "2026-01-01T00:00:00Z"})
    signed = dag_cbor({"did": "did:plc:x", "version": 3, "rev": "r", "prev": None, "sig": b"\0" * 64, "data": "no"})
    body = {"seq": 5, "repo": "did:plc:x", "rev": "r", "since": None, "time": "2026-01-01T00:00:00Z",
            "ops": [{"action": "create", "path": "app.bsky.feed.like/a", "cid": cid_for(record), "prev": None}],
            "blocks": car_bytes([cid_for(signed)], [(cid_for(signed), signed), (cid_for(record), record)]),
            "commit": cid_for(signed), "rebase": False, "tooBig": False, "blobs": [], "prevData": None}
    raw = frame("#commit", body)
    assert len(decode_frame(raw).events) == 1
    assert [reason for reason, _ in decode_frame(raw, verify_mst=True).drops] == ["bad_car"]


@pytest.fixture(scope="module")
def corpus_commits(corpus_frames):
    return [commit_parts(frame) for frame in corpus_frames if split_frame(frame)[0].get("t") == "#commit"]


@FUZZ
@given(st.data())
def test_twins_agree_on_commits_with_edited_ops(corpus_commits, data):
    body, blocks, root = data.draw(st.sampled_from(corpus_commits))
    paths = st.one_of(st.sampled_from([op["path"] for op in body["ops"]]), keys)
    cids = st.one_of(st.sampled_from(list(blocks.keys())), st.binary(min_size=36, max_size=36), st.none())
    ops = [dict(op) for op in body["ops"]]
    for op in ops:
        if data.draw(st.booleans()):
            op["path"] = data.draw(paths)
        if data.draw(st.booleans()):
            op["cid"] = data.draw(cids)
    edited = dict(body, ops=ops)
    assert run_commit(fast_commit, fast, edited, blocks, root) == run_commit(ref_commit, ref, edited, blocks, root)
