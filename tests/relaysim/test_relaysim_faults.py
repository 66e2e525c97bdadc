"""Fault injection: each fault flag yields exactly the frames it names, at the seqs it names,
checked by decoding what comes out (with the daemon's own frame decoder)."""
from __future__ import annotations

import asyncio

import libipld
import pytest

from jetstream.ingest.car import read_car, verify_block
from jetstream.ingest.decode import decode_frame
from jetstream.ingest.frames import FrameError
from jetstream.relaysim.faults import FaultInjector, Faults
from jetstream.relaysim.server import RelaySim
from jetstream.relaysim.synthetic import SyntheticSource
from tests.wsclient import connect

pytestmark = pytest.mark.timeout(30)

SEQS = range(1, 101)


def source() -> SyntheticSource:
    return SyntheticSource(seed=5, dids=100)


def stream(faults: Faults, seqs=SEQS) -> list[bytes]:
    """What one connection is sent for `seqs`, without sockets (the server's order)."""
    frames_source = source()
    injector = FaultInjector(faults, frames_source)
    sent: list[bytes] = []
    for seq in seqs:
        step = injector.step_at(seq)
        sent += [frames_source.frame(seq)] if step is None else injector.frames_for(step, seq, frames_source.frame)
    return sent


def kind_and_seq(frame: bytes) -> tuple[str, int | None]:
    """("undecodable", None) for frames the daemon's decoder rejects, else (type, seq)."""
    try:
        decoded = decode_frame(frame)
    except FrameError:
        return "undecodable", None
    if decoded.frame_type == "#commit" and libipld.decode_dag_cbor_multi(frame)[1]["tooBig"]:
        return "tooBig", decoded.seq
    return decoded.frame_type, decoded.seq


def seqs_of(frames: list[bytes]) -> list[int | None]:
    return [kind_and_seq(frame)[1] for frame in frames]


def multiples(every: int) -> list[int]:
    return [seq for seq in SEQS if seq % every == 0]


@pytest.mark.parametrize("setting", [1.5, -1, -0.5, 2.25])
def test_a_fault_rate_is_off_every_n_or_a_probability(setting):
    with pytest.raises(ValueError):
        Faults(garbage=setting)


def test_no_faults_means_the_plain_stream():
    assert stream(Faults()) == [source().frame(seq) for seq in SEQS]
    assert Faults().enabled == () and Faults(sync=0.5, error=3).enabled == ("sync", "error")


def test_garbage_inserts_an_undecodable_frame_before_every_nth_seq():
    sent = stream(Faults(garbage=10))
    assert len(sent) == 110
    kinds = [kind_and_seq(frame) for frame in sent]
    garbage_positions = [index for index, (kind, _) in enumerate(kinds) if kind == "undecodable"]
    assert [kinds[index + 1][1] for index in garbage_positions] == multiples(10)
    assert [seq for kind, seq in kinds if kind != "undecodable"] == list(SEQS)


def test_truncated_inserts_the_first_half_of_the_frame_before_it():
    sent = stream(Faults(truncated=7))
    assert len(sent) == 100 + len(multiples(7))
    truncated = [index for index, frame in enumerate(sent) if kind_and_seq(frame)[0] == "undecodable"]
    assert [kind_and_seq(sent[index + 1])[1] for index in truncated] == multiples(7)
    for index in truncated:
        whole = sent[index + 1]
        assert whole.startswith(sent[index]) and len(sent[index]) == len(whole) // 2


def test_info_inserts_an_info_frame_without_a_seq():
    sent = stream(Faults(info=9))
    infos = [index for index, frame in enumerate(sent) if kind_and_seq(frame)[0] == "#info"]
    assert [kind_and_seq(sent[index + 1])[1] for index in infos] == multiples(9)
    for index in infos:
        header, body = libipld.decode_dag_cbor_multi(sent[index])
        assert header == {"op": 1, "t": "#info"} and body["name"] == "OutdatedCursor" and "seq" not in body
    assert [seq for seq in seqs_of(sent) if seq is not None] == list(SEQS)


def test_too_big_replaces_every_nth_frame_with_an_empty_too_big_commit_at_its_seq():
    sent = stream(Faults(too_big=5))
    assert seqs_of(sent) == list(SEQS), "a replacement takes the seq; nothing is added"
    for seq, frame in zip(SEQS, sent):
        if seq % 5:
            assert frame == source().frame(seq)
            continue
        header, body = libipld.decode_dag_cbor_multi(frame)
        assert header == {"op": 1, "t": "#commit"}
        assert body["tooBig"] is True and body["ops"] == [] and body["blocks"] == b"" and body["seq"] == seq
        assert decode_frame(frame).drops[0][0] == "too_big"


def test_sync_replaces_every_nth_frame_with_a_sync_frame_holding_a_commit():
    sent = stream(Faults(sync=4))
    assert seqs_of(sent) == list(SEQS)
    syncs = [frame for frame in sent if kind_and_seq(frame)[0] == "#sync"]
    assert [kind_and_seq(frame)[1] for frame in syncs] == multiples(4)
    for frame in syncs:
        _, body = libipld.decode_dag_cbor_multi(frame)
        assert set(body) == {"did", "rev", "seq", "time", "blocks"}
        car = read_car(body["blocks"], verify=True)
        (root,) = car.roots
        commit = libipld.decode_dag_cbor(bytes(car.blocks[root]))
        assert verify_block(root, car.blocks[root])
        assert (commit["did"], commit["rev"], commit["version"]) == (body["did"], body["rev"], 3)
        decoded = decode_frame(frame)  # ingest stores it as one sync event (served with includeSync=true)
        assert decoded.drops == [] and [(e.kind, e.did) for e in decoded.events] == [(3, body["did"])]


def test_duplicate_sends_every_nth_frame_twice():
    sent = stream(Faults(duplicate=6))
    seqs = seqs_of(sent)
    assert sorted(seqs) == sorted([*SEQS, *multiples(6)])
    for index, seq in enumerate(seqs):
        if seq % 6 == 0 and seqs[index - 1] != seq:
            assert sent[index + 1] == sent[index] and seqs[index + 1] == seq


def test_regress_resends_the_previous_seq_after_every_nth_frame():
    seqs = seqs_of(stream(Faults(regress=8)))
    regressed = [index for index in range(1, len(seqs)) if seqs[index] < seqs[index - 1]]
    assert [seqs[index - 1] for index in regressed] == multiples(8)
    assert [seqs[index] for index in regressed] == [seq - 1 for seq in multiples(8)]
    assert len(seqs) == 100 + len(multiples(8))


def test_faults_at_one_seq_come_in_the_documented_order():
    sent = stream(Faults(garbage=10, info=10, too_big=10, duplicate=10), seqs=range(9, 12))
    assert [kind_and_seq(frame) for frame in sent] == [
        ("#commit", 9), ("undecodable", None), ("#info", None), ("tooBig", 10), ("tooBig", 10), ("#commit", 11)]


def test_probabilistic_faults_hit_about_that_share_of_seqs_reproducibly_by_seed():
    seqs = range(1, 4001)
    hit = {seed: {seq for seq in seqs if Faults(sync=0.05, seed=seed).hits("sync", seq, 1)} for seed in (1, 2)}
    assert 120 < len(hit[1]) < 290 and 120 < len(hit[2]) < 290
    assert hit[1] == {seq for seq in seqs if Faults(sync=0.05, seed=1).hits("sync", seq, 1)}
    assert hit[1] != hit[2]


# -- over a real socket ---------------------------------------------------------------------

async def started(faults: Faults, rate: float = 0) -> RelaySim:
    relay = RelaySim(source(), rate=rate, faults=faults)
    await relay.start("127.0.0.1", 0)
    return relay


async def wait_closed(transport, timeout: float = 10) -> None:
    await asyncio.wait_for(transport.wait_disconnected(), timeout)


async def test_disconnect_closes_tcp_without_a_close_frame_after_every_nth_seq_once_per_seq():
    relay = await started(Faults(disconnect=25))
    try:
        transport, client = await connect(relay.url + "?cursor=0")
        await wait_closed(transport)
        assert seqs_of(client.payloads) == list(range(1, 26)) and client.close_code is None
        transport, client = await connect(relay.url + "?cursor=25")
        await wait_closed(transport)
        assert seqs_of(client.payloads) == list(range(26, 51))
        # Resuming before seqs that already fired: they pass, the next unfired one cuts.
        transport, client = await connect(relay.url + "?cursor=20")
        await wait_closed(transport)
        assert seqs_of(client.payloads) == list(range(21, 76))
        assert relay.injector.injected["disconnect"] == 3
    finally:
        await relay.close()


async def test_error_sends_an_error_frame_then_a_close_frame():
    relay = await started(Faults(error=10))
    try:
        transport, client = await connect(relay.url + "?cursor=0")
        await wait_closed(transport)
        *frames, error = client.payloads
        assert seqs_of(frames) == list(range(1, 11))
        header, body = libipld.decode_dag_cbor_multi(error)
        assert header == {"op": -1} and body["error"] == "ConsumerTooSlow" and "seq 10" in body["message"]
        assert decode_frame(error).frame_type == "error"
        assert client.close_code == 1011
    finally:
        await relay.close()


async def test_frame_faults_reach_a_client_over_the_socket_as_planned():
    faults = Faults(garbage=7, too_big=5, duplicate=11, regress=13, sync=0.1, seed=3)
    relay = await started(faults)
    try:
        _, client = await connect(relay.url + "?cursor=0")
        expected = stream(faults)
        received = await client.wait_for_count(len(expected))
        assert received[:len(expected)] == expected
        kinds = [kind_and_seq(frame)[0] for frame in expected]
        assert kinds.count("undecodable") == len(multiples(7))
        assert {"tooBig", "#sync", "#commit"} <= set(kinds)
    finally:
        await relay.close()
