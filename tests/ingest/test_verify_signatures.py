"""--verify-signatures: the signed-commit check, DID resolution over real HTTP, and the ordered stage in front
of a real pipeline (RocksDB log, ring, sequencer), fed the recorded corpus and frames signed with real keys."""
from __future__ import annotations

import asyncio
import re

import libipld
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from jetstream import metrics
from jetstream.config import parse_serve_args
from jetstream.ingest.car import read_car
from jetstream.ingest.frames import split_frame
from jetstream.ingest.sigcheck import tid_time_us
from jetstream.ingest.verify import (
    CURVE_K256,
    CURVE_P256,
    CommitFormatError,
    KeyFormatError,
    PublicKey,
    base58btc_decode,
    base58btc_encode,
    check_commit,
    encode_multikey,
    parse_legacy_key,
    parse_multikey,
    signing_key_of,
    split_signed_commit,
)
from tests.ingest.did_fixtures import (
    FakeDidDirectory,
    GatedPipeline,
    Signer,
    did_document,
    identity_frame,
    load_corpus_did_docs,
    rev_at,
    signed_commit_frame,
)

pytestmark = pytest.mark.timeout(120)

TIME_US = re.compile(rb'"time_us":\d+')
SOME_TIME_US = 1_783_000_000_000_000


@pytest.fixture(params=[0, 1], ids=["in_loop", "pool"])
def verify_processes(request) -> int:
    """--verify-processes of the pipeline tests: checks in the ingest loop, or in one verify process."""
    return request.param


def without_time_us(line: bytes) -> bytes:
    return TIME_US.sub(b'"time_us":0', line, count=1)


def drops(reason: str) -> float:
    return metrics.INGEST_DROPS.labels(reason)._value.get()


def corpus_commits(frames):
    """(frame, repo, rev, signed commit block) of every #commit in the corpus."""
    out = []
    for frame in frames:
        header, body = split_frame(frame)
        if header["t"] == "#commit":
            car = read_car(body["blocks"])
            out.append((frame, body["repo"], body["rev"], bytes(car.blocks[car.roots[0]])))
    return out


# ---------------------------------------------------------------------------
# verify.py: pure checks
# ---------------------------------------------------------------------------

def test_every_corpus_commit_verifies_with_its_did_document(corpus_dir, corpus_frames):
    docs = load_corpus_did_docs(corpus_dir)
    commits = corpus_commits(corpus_frames)
    assert len(commits) == 148
    for _, repo, rev, block in commits:
        assert check_commit(block, repo, rev, signing_key_of(docs[repo], repo)) is None


def test_unsigned_bytes_are_the_canonical_encoding_of_the_commit_without_sig(corpus_frames):
    for _, _, _, block in corpus_commits(corpus_frames):
        unsigned, signature = split_signed_commit(block)
        commit = libipld.decode_dag_cbor(block)
        assert signature == commit.pop("sig") and len(signature) == 64
        assert unsigned == libipld.encode_dag_cbor(commit)


def test_another_accounts_key_fails(corpus_dir, corpus_frames):
    docs = load_corpus_did_docs(corpus_dir)
    (_, repo_a, rev_a, block_a), (_, repo_b, _, _) = corpus_commits(corpus_frames)[:2]
    key_b = signing_key_of(docs[repo_b], repo_b)
    assert check_commit(block_a, repo_a, rev_a, key_b)[0] == "bad_signature"


def test_commit_naming_another_did_or_rev_is_dropped_before_the_signature(corpus_dir, corpus_frames):
    docs = load_corpus_did_docs(corpus_dir)
    (_, repo_a, rev_a, block_a), (_, repo_b, _, _) = corpus_commits(corpus_frames)[:2]
    key_a = signing_key_of(docs[repo_a], repo_a)
    assert check_commit(block_a, repo_b, rev_a, key_a)[0] == "did_mismatch"
    assert check_commit(block_a, repo_a, "3zzzzzzzzzzzz", key_a)[0] == "rev_mismatch"


@pytest.mark.parametrize("curve", [CURVE_K256, CURVE_P256])
def test_both_curves_verify_low_s_and_refuse_high_s(curve):
    signer = Signer(curve)
    key = parse_multikey(signer.multikey())
    assert key.curve == curve and key.point == signer.point()
    message = b"an unsigned commit"
    assert key.verify(message, signer.sign(message))
    assert not key.verify(message, signer.sign(message, high_s=True)), "high-S must be refused"
    assert not key.verify(message + b"!", signer.sign(message))
    assert not key.verify(message, signer.sign(message)[:63])


@pytest.mark.parametrize("curve", [CURVE_K256, CURVE_P256])
def test_multikey_prefixes_and_legacy_forms(curve):
    signer = Signer(curve)
    multikey = signer.multikey()
    assert multikey.startswith("zQ3s" if curve == CURVE_K256 else "zDn")  # atproto's documented prefixes
    legacy_type = "EcdsaSecp256k1VerificationKey2019" if curve == CURVE_K256 else "EcdsaSecp256r1VerificationKey2019"
    legacy = parse_legacy_key(legacy_type, "z" + base58btc_encode(signer.point()))
    assert legacy == parse_multikey(multikey)
    did = "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa"
    doc = did_document(did, "z" + base58btc_encode(signer.point()), key_type=legacy_type)
    assert signing_key_of(doc, did) == legacy


def test_documents_without_a_usable_key_say_why():
    did = "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa"
    good = did_document(did, Signer().multikey())
    cases = {
        "doc_id_mismatch": {**good, "id": "did:plc:bbbbbbbbbbbbbbbbbbbbbbbb"},
        "no_verification_method": {**good, "verificationMethod": None},
        "no_atproto_key": {**good, "verificationMethod": [{**good["verificationMethod"][0], "id": did + "#other"}]},
        "unsupported_key_type": did_document(did, Signer().multikey(), key_type="Ed25519VerificationKey2020"),
        "unknown_multicodec": did_document(did, "z" + base58btc_encode(b"\xed\x01" + bytes(32))),
        "not_base58btc_multibase": did_document(did, "u" + "A" * 40),
        "point_not_on_curve": did_document(did, encode_multikey(CURVE_K256, b"\x02" + b"\xff" * 32)),
    }
    for reason, document in cases.items():
        with pytest.raises(KeyFormatError) as error:
            signing_key_of(document, did)
        assert error.value.reason == reason
    with pytest.raises(KeyFormatError):
        signing_key_of([], did)


def test_base58btc_round_trip_keeps_leading_zero_bytes():
    for data in (b"", b"\x00", b"\x00\x00\x01", bytes(range(40))):
        assert base58btc_decode(base58btc_encode(data)) == data


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.text(max_size=120), st.binary(max_size=80).map(lambda raw: "z" + base58btc_encode(raw)),
                 st.sampled_from([b"\xe7\x01", b"\x80\x24"]).flatmap(
                     lambda prefix: st.binary(min_size=0, max_size=70).map(
                         lambda raw: "z" + base58btc_encode(prefix + raw)))))
def test_fuzz_multikey_parser_only_raises_key_format_error(text):
    try:
        key = parse_multikey(text)
    except KeyFormatError:
        return
    assert isinstance(key, PublicKey) and key.curve in (CURVE_K256, CURVE_P256)
    assert key.verify(b"x", bytes(64)) is False


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_signed_commit_splitter_only_raises_commit_format_error(block):
    try:
        unsigned, signature = split_signed_commit(block)
    except CommitFormatError:
        return
    assert len(signature) == 64 and len(unsigned) == len(block) - 69


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=len(b"\xa1csigX@") + 70), st.integers(0, 255))
def test_fuzz_altered_corpus_block_never_verifies_or_crashes(position, value):
    signer = Signer()
    frame = signed_commit_frame(signer, "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa", rev_at(SOME_TIME_US), 1)
    _, body = split_frame(frame)
    car = read_car(body["blocks"])
    block = bytearray(car.blocks[car.roots[0]])
    position %= len(block)
    if block[position] == value:
        return
    block[position] = value
    key = parse_multikey(signer.multikey())
    assert check_commit(bytes(block), "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa", rev_at(SOME_TIME_US), key) is not None


def test_document_urls_and_the_did_web_rules():
    from jetstream.ingest.didres import document_url

    plc = "did:plc:2a7ygipkrbh544aqhcav53oy"
    assert document_url(plc, "https://plc.directory/") == f"https://plc.directory/{plc}"
    assert document_url("did:web:example.com", "x") == "https://example.com/.well-known/did.json"
    assert document_url("did:web:127.0.0.1%3A8080", "x", "http") == "http://127.0.0.1:8080/.well-known/did.json"
    for did, reason in (("did:plc:short", "bad_plc_did"), ("did:key:zQ3s", "unsupported_did_method"),
                        ("did:web:example.com:user:alice", "unsupported_did_web"),
                        ("did:web:127.0.0.1", "did_web_not_public"), ("did:web:localhost", "did_web_not_public"),
                        ("did:web:example.com%3A8443", "did_web_not_public"), ("did:web:[::1]", "unsupported_did_web")):
        with pytest.raises(KeyFormatError) as error:
            document_url(did, "https://plc.directory")
        assert error.value.reason == reason, did


def test_tid_time_us_reads_the_timestamp_of_a_rev():
    assert tid_time_us(rev_at(SOME_TIME_US, 7)) == SOME_TIME_US
    assert tid_time_us("not-a-tid") is None


def test_flags_and_environment():
    cfg = parse_serve_args([], environ={})
    assert cfg.verify_signatures is False and cfg.plc_url == "https://plc.directory" and cfg.unresolved_did == "pass"
    cfg = parse_serve_args(["--verify-signatures", "--unresolved-did", "drop"], environ={"JETSTREAM_PLC_URL": "http://x"})
    assert cfg.verify_signatures is True and cfg.unresolved_did == "drop" and cfg.plc_url == "http://x"
    from jetstream.config import ConfigError

    with pytest.raises(ConfigError):  # refused with the flag and its variable named (tests/operator)
        parse_serve_args(["--unresolved-did", "maybe"], environ={})


# ---------------------------------------------------------------------------
# the stage in front of a real pipeline, DID documents over real HTTP
# ---------------------------------------------------------------------------

async def test_corpus_verifies_end_to_end_byte_identical_each_did_fetched_once(tmp_path, corpus_dir, corpus_frames,
                                                                                 expected_v1_lines, verify_processes):
    docs = load_corpus_did_docs(corpus_dir)
    directory = await FakeDidDirectory(docs).start()
    gated = GatedPipeline(tmp_path / "log", directory.url, verify_processes=verify_processes)
    try:
        await gated.run(corpus_frames)
        assert [without_time_us(line) for line in gated.event_lines()] == [without_time_us(line) for line in expected_v1_lines]
        assert gated.gate.verified == 148 and gated.gate.dropped == 0 and gated.gate.passed_unresolved == 0
        assert gated.gate.verdicts == 148, "each commit checked once"
        if verify_processes:
            assert gated.gate.pool.usable and gated.gate.pool.batches_sent >= 1 and gated.gate.pool.outstanding == 0
        assert set(directory.requests) == set(docs) and set(directory.requests.values()) == {1}
        assert gated.event_log.relay_cursor() == split_frame(corpus_frames[-1])[1]["seq"]
    finally:
        await gated.close()
        await directory.close()


async def test_wrong_key_in_one_document_drops_exactly_that_authors_commits(tmp_path, corpus_dir, corpus_frames,
                                                                           expected_v1_lines, verify_processes):
    docs = load_corpus_did_docs(corpus_dir)
    commits = corpus_commits(corpus_frames)
    victim, other = commits[3][1], commits[4][1]
    # The victim's document, naming another account's key as the victim's #atproto key.
    docs[victim] = did_document(victim, docs[other]["verificationMethod"][0]["publicKeyMultibase"])
    directory = await FakeDidDirectory(docs).start()
    gated = GatedPipeline(tmp_path / "log", directory.url, verify_processes=verify_processes)
    before = drops("bad_signature")
    try:
        await gated.run(corpus_frames)
        expected = [without_time_us(line) for line in expected_v1_lines if victim.encode() not in line
                    or b'"kind":"commit"' not in line]
        assert [without_time_us(line) for line in gated.event_lines()] == expected
        victim_commits = sum(1 for _, repo, _, _ in commits if repo == victim)
        assert drops("bad_signature") - before == victim_commits == gated.gate.dropped
        assert directory.requests[victim] == 1, "a key fetched for this very commit is not fetched again"
    finally:
        await gated.close()
        await directory.close()


async def test_commit_block_altered_after_signing_is_dropped(tmp_path, corpus_dir, corpus_frames, verify_processes):
    docs = load_corpus_did_docs(corpus_dir)
    frame, repo, rev, block = corpus_commits(corpus_frames)[0]
    data_at = block.index(b"ddata") + len(b"ddata") + 12  # inside the MST root link's digest
    altered_block = block[:data_at] + bytes([block[data_at] ^ 1]) + block[data_at + 1:]
    sig_at = block.index(b"csigX@") + 10
    forged_sig = block[:sig_at] + bytes([block[sig_at] ^ 1]) + block[sig_at + 1:]
    from jetstream.relaysim.seqpatch import patch_seq

    seq = split_frame(frame)[1]["seq"]
    frames = [frame.replace(block, altered_block), patch_seq(frame.replace(block, forged_sig), seq + 1)]
    assert all(altered != frame for altered in frames)
    directory = await FakeDidDirectory(docs).start()
    gated = GatedPipeline(tmp_path / "log", directory.url, verify_processes=verify_processes)
    before = drops("bad_signature")
    try:
        await gated.run(frames)
        assert gated.event_lines() == [] and drops("bad_signature") - before == 2
        assert gated.event_log.relay_cursor() == seq + 1
    finally:
        await gated.close()
        await directory.close()


async def test_did_web_author_with_a_p256_key(tmp_path, verify_processes):
    directory = await FakeDidDirectory().start()
    signer = Signer(CURVE_P256)
    did = directory.web_did
    directory.docs[did] = signer.document(did)
    gated = GatedPipeline(tmp_path / "log", directory.url, verify_processes=verify_processes)  # did:web over http: a test-only resolver option
    try:
        await gated.run([signed_commit_frame(signer, did, rev_at(SOME_TIME_US), 1, text="from did:web")])
        lines = gated.event_lines()
        assert len(lines) == 1 and b"from did:web" in lines[0] and did.encode() in lines[0]
        assert gated.gate.verified == 1 and directory.requests[did] == 1
    finally:
        await gated.close()
        await directory.close()


@pytest.mark.parametrize("policy", ["pass", "drop"])
async def test_directory_down_applies_the_policy_and_nothing_crashes(tmp_path, corpus_frames, expected_v1_lines, policy,
                                                                     verify_processes):
    directory = await FakeDidDirectory().start()
    url = directory.url
    await directory.close()  # nothing listens there any more: every fetch is refused
    gated = GatedPipeline(tmp_path / "log", url, unresolved_policy=policy, verify_processes=verify_processes)
    before = drops("unresolved_did")
    try:
        await gated.run(corpus_frames)
        lines = gated.event_lines()
        if policy == "pass":
            assert [without_time_us(line) for line in lines] == [without_time_us(line) for line in expected_v1_lines]
            assert gated.gate.passed_unresolved == 148 and drops("unresolved_did") == before
            # An unverified commit does not become its DID's last rev (a forged far-ahead rev would
            # otherwise get the account's real commits dropped as stale).
            assert gated.event_log.last_rev(corpus_commits(corpus_frames)[0][1]) is None
        else:
            assert [line for line in lines if b'"kind":"commit"' in line] == []
            assert len(lines) == 2  # the #identity and #account events still come out
            assert drops("unresolved_did") - before == 148
        assert gated.event_log.relay_cursor() == split_frame(corpus_frames[-1])[1]["seq"]
        assert gated.resolver.failures == 148 and gated.resolver.fetches == 148
    finally:
        await gated.close()


async def test_slow_directory_keeps_relay_order_and_the_window_applies(tmp_path, verify_processes):
    directory = await FakeDidDirectory().start()
    slow, quick = Signer(), Signer()
    slow_did, quick_did = "did:plc:" + "s" * 24, "did:plc:" + "q" * 24
    directory.docs = {slow_did: slow.document(slow_did), quick_did: quick.document(quick_did)}
    gated = GatedPipeline(tmp_path / "log", directory.url, max_wait_s=30.0, verify_processes=verify_processes)
    try:
        await gated.run([signed_commit_frame(quick, quick_did, rev_at(SOME_TIME_US), 1, text="warm")])
        directory.delay_s = 0.5
        frames = [signed_commit_frame(slow, slow_did, rev_at(SOME_TIME_US + 1), 2, text="first"),
                  signed_commit_frame(quick, quick_did, rev_at(SOME_TIME_US + 2), 3, text="second")]
        await gated.run(frames)
        texts = [re.search(rb'"text":"(\w+)"', line).group(1) for line in gated.event_lines()]
        assert texts == [b"warm", b"first", b"second"], "the cached author's commit waits behind the slow one"
    finally:
        await gated.close()
    # Now a window shorter than the fetch: the head gets the policy (drop) and the rest flows.
    directory.delay_s = 3.0
    gated = GatedPipeline(tmp_path / "log2", directory.url, max_wait_s=0.3, unresolved_policy="drop", verify_processes=verify_processes)
    try:
        started = asyncio.get_running_loop().time()
        await gated.run([signed_commit_frame(slow, slow_did, rev_at(SOME_TIME_US + 3), 4, text="late"),
                         identity_frame(quick_did, 5)])
        assert asyncio.get_running_loop().time() - started < 2.5
        lines = gated.event_lines()
        assert len(lines) == 1 and b'"kind":"identity"' in lines[0]
        assert gated.event_log.relay_cursor() == 5
    finally:
        await gated.close()
        await directory.close()


async def test_key_rotation_is_re_resolved(tmp_path, verify_processes):
    directory = await FakeDidDirectory().start()
    old, new, newer = Signer(), Signer(CURVE_P256), Signer()
    did = "did:plc:" + "r" * 24
    directory.docs[did] = old.document(did)
    gated = GatedPipeline(tmp_path / "log", directory.url, verify_processes=verify_processes)
    try:
        await gated.run([signed_commit_frame(old, did, rev_at(SOME_TIME_US), 1, text="old")])
        # Rotation announced by #identity: the cached key is forgotten and fetched again.
        directory.docs[did] = new.document(did)
        await gated.run([identity_frame(did, 2), signed_commit_frame(new, did, rev_at(SOME_TIME_US + 1), 3, text="new")])
        assert directory.requests[did] == 2
        # Rotation not (yet) announced: a bad signature under a cached key re-resolves once.
        directory.docs[did] = newer.document(did)
        await gated.run([signed_commit_frame(newer, did, rev_at(SOME_TIME_US + 2), 4, text="newer")])
        assert directory.requests[did] == 3
        # ...but a forged commit under that freshly fetched key does not fetch again.
        await gated.run([signed_commit_frame(old, did, rev_at(SOME_TIME_US + 3), 5, text="forged")])
        assert directory.requests[did] == 3
        texts = [re.search(rb'"text":"(\w+)"', line).group(1) for line in gated.event_lines()
                 if b'"kind":"commit"' in line]
        assert texts == [b"old", b"new", b"newer"] and gated.gate.dropped == 1
    finally:
        await gated.close()
        await directory.close()


async def test_stale_revs_are_dropped_and_remembered_across_restarts(tmp_path, corpus_dir, corpus_frames,
                                                                      verify_processes):
    from jetstream.relaysim.seqpatch import patch_seq

    docs = load_corpus_did_docs(corpus_dir)
    directory = await FakeDidDirectory(docs).start()
    last_seq = split_frame(corpus_frames[-1])[1]["seq"]
    again = [patch_seq(frame, last_seq + index + 1) for index, frame in enumerate(corpus_frames)]
    before = drops("stale_rev")
    gated = GatedPipeline(tmp_path / "log", directory.url, verify_processes=verify_processes)
    try:
        await gated.run(corpus_frames)
        await gated.run(again[:50])  # relay-sim's loop: the same commits under new seqs
        assert drops("stale_rev") - before == sum(1 for f in again[:50] if split_frame(f)[0]["t"] == "#commit")
    finally:
        await gated.close()
    gated = GatedPipeline(tmp_path / "log", directory.url, verify_processes=verify_processes)  # a restart: revs come from the did_revs column family
    try:
        assert gated.event_log.last_rev(corpus_commits(corpus_frames)[0][1]) == corpus_commits(corpus_frames)[0][2]
        count_before = len(gated.event_lines())
        await gated.run(again[50:])
        new_lines = gated.event_lines()[count_before:]
        assert all(b'"kind":"commit"' not in line for line in new_lines) and len(new_lines) >= 1
        assert drops("stale_rev") - before == 148
        assert gated.event_log.relay_cursor() == last_seq + len(corpus_frames)
    finally:
        await gated.close()
        await directory.close()


async def test_a_failed_write_forgets_unwritten_revs(tmp_path, verify_processes):
    directory = await FakeDidDirectory().start()
    signer = Signer()
    did = "did:plc:" + "w" * 24
    directory.docs[did] = signer.document(did)
    gated = GatedPipeline(tmp_path / "log", directory.url, verify_processes=verify_processes)
    try:
        frame = signed_commit_frame(signer, did, rev_at(SOME_TIME_US), 1)
        original_append = gated.event_log.append

        def failing_append(*args, **kwargs):
            raise OSError("disk full (simulated)")

        gated.event_log.append = failing_append
        await gated.run([frame])
        assert gated.event_lines() == [] and gated.event_log.last_rev(did) is None
        gated.event_log.append = original_append
        await gated.run([frame])  # the relay sends it again: not stale
        assert len(gated.event_lines()) == 1 and gated.event_log.last_rev(did) == rev_at(SOME_TIME_US)
    finally:
        await gated.close()
        await directory.close()


async def test_held_frame_limit_applies_the_policy_to_the_oldest_at_once(tmp_path, verify_processes):
    directory = await FakeDidDirectory().start()
    signers = [Signer() for _ in range(5)]
    dids = [f"did:plc:{letter * 24}" for letter in "abcde"]
    directory.docs = {did: signer.document(did) for did, signer in zip(dids, signers)}
    directory.delay_s = 0.5
    gated = GatedPipeline(tmp_path / "log", directory.url, max_wait_s=60.0, max_held=2, unresolved_policy="drop",
                          timeout_s=10.0, verify_processes=verify_processes)
    try:
        frames = [signed_commit_frame(signer, did, rev_at(SOME_TIME_US), seq)
                  for seq, (did, signer) in enumerate(zip(dids, signers), 1)]
        before = drops("unresolved_did")
        for frame in frames:
            gated.pipeline.submit(frame)
        assert gated.gate.held_count() == 2, "beyond --verify-max-held the oldest leave at once"
        assert gated.gate.dropped == 3
        await gated.run([])
        assert drops("unresolved_did") - before == 3
        assert gated.gate.verified == 2 and len(gated.event_lines()) == 2
        assert gated.event_log.relay_cursor() == 5
    finally:
        await gated.close()
        await directory.close()


async def test_resolution_failures_are_named_and_cached(tmp_path):
    from aiohttp import web

    from jetstream.ingest.didres import DidResolver

    async def oversized(request):
        return web.Response(body=b"{" + b" " * 70_000 + b"}", content_type="application/json")

    async def not_json(request):
        return web.Response(body=b"<html>", content_type="text/html")

    async def broken(request):
        return web.Response(status=500)

    async def slow(request):
        await asyncio.sleep(5)
        return web.Response(status=404)

    async def redirect(request):
        raise web.HTTPFound("/did:plc:" + "a" * 24)

    app = web.Application()
    routes = {"b": oversized, "c": not_json, "d": broken, "e": slow, "f": redirect}
    for letter, handler in routes.items():
        app.router.add_get(f"/did:plc:{letter * 24}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
    resolver = DidResolver(plc_url=url, cache_size=10, cache_ttl_s=60, negative_ttl_s=60, timeout_s=0.5,
                           max_concurrency=2, max_doc_bytes=65_536)
    try:
        expected = {"a": "not_found", "b": "doc_too_large", "c": "bad_json", "d": "http_500", "e": "timeout",
                    "f": "http_302"}
        results = await asyncio.gather(*(resolver.resolve(f"did:plc:{letter * 24}") for letter in expected))
        assert {letter: entry.failure for letter, entry in zip(expected, results)} == expected
        assert all(entry.key is None for entry in results)
        fetches = resolver.fetches
        assert resolver.cached("did:plc:" + "a" * 24).failure == "not_found"  # negative cache
        assert resolver.fetches == fetches
    finally:
        await resolver.close()
        await runner.cleanup()


def test_did_revs_rows_older_than_the_retention_are_trimmed(tmp_path):
    from jetstream.ingest.sigcheck import tid_time_us as time_of
    from jetstream.log.store import EventLog

    with EventLog(str(tmp_path / "log")) as event_log:
        old, new = rev_at(SOME_TIME_US), rev_at(SOME_TIME_US + 10**9)
        event_log.append([], 1, {f"did:plc:{index:024d}": (old if index % 2 else new) for index in range(50)})
        start = b""
        while start is not None:  # small slices, as the daemon's hourly pass walks them
            start = event_log.trim_did_revs(lambda rev: time_of(rev) >= SOME_TIME_US + 1, start, limit=7)
        kept = [event_log.last_rev(f"did:plc:{index:024d}") for index in range(50)]
        assert kept == [None if index % 2 else new for index in range(50)]
        assert event_log.relay_cursor() == 1


def test_with_the_flag_off_the_pipeline_has_no_stage(tmp_path):
    from jetstream.compression import EventCompressor
    from jetstream.core import LiveRing
    from jetstream.ingest.pipeline import IngestPipeline
    from jetstream.ingest.sequencer import Sequencer
    from jetstream.log.store import EventLog

    with EventLog(str(tmp_path / "log")) as event_log:
        pipeline = IngestPipeline(event_log, LiveRing(10), Sequencer(0), EventCompressor(), lambda: None,
                                  socket_url="test")
        assert pipeline.gate is None and "submit" not in vars(pipeline)  # submit is the plain method


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(min_size=1, max_size=12).filter(lambda key: key != "sig"),
                       st.one_of(st.integers(-2**63, 2**64 - 1), st.text(max_size=40), st.binary(max_size=40),
                                 st.none(), st.booleans(), st.lists(st.integers(0, 1000), max_size=5)),
                       max_size=30),
       st.binary(min_size=64, max_size=64))
def test_property_unsigned_bytes_equal_libipld_encoding_of_the_map_without_sig(fields, signature):
    """Removing the sig entry from canonical bytes == canonically encoding the smaller map (any keys, up to 31)."""
    block = libipld.encode_dag_cbor({**fields, "sig": signature})
    # libipld encodes bytes that parse as a CID as a CID link (how it round-trips links); a relay's
    # block always carries sig as a byte string, so only those inputs are the property's domain.
    assume(b"csigX@" + signature in block)
    unsigned, found = split_signed_commit(block)
    assert found == signature
    assert unsigned == libipld.encode_dag_cbor(fields)
