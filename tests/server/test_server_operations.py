"""Operations surface of a real daemon: /healthz, /metrics names and values, /zstd-dictionary,
and the compression round trip with an operator's dictionary (v1's, from the corpus)."""
from __future__ import annotations

import asyncio
import json
import re
import urllib.request

import libipld
import pytest
import zstandard
from picows import WSMsgType

from jetstream.config import parse_serve_args
from jetstream.daemon import Daemon
from jetstream.dictionary import SHIPPED_DICTIONARY_ID, SHIPPED_DICTIONARY_PATH
from jetstream.implementation import LiveRing
from jetstream.log.store import EventLog
from jetstream.relaysim.server import FileSource, RelaySim
from jetstream.server.app import SubscribeServer
from jetstream.server.metrics import SERVER_METRICS
from tests.server.server_helpers import Stack, http_get, settle
from tests.wsclient import connect

pytestmark = pytest.mark.timeout(60)

LEGACY_DICTIONARY_ID = 1612007021  # docs/protocol.md §7.2


def first_seq(frames: list[bytes]) -> int:
    return libipld.decode_dag_cbor_multi(frames[0])[1]["seq"]


class RunningDaemon:
    """RelaySim over the corpus + a Daemon with extra flags; the relay is connected on demand."""

    def __init__(self, tmp_path, corpus_dir, corpus_frames, *extra_flags: str) -> None:
        self.tmp_path, self.corpus_dir, self.frames, self.extra = tmp_path, corpus_dir, corpus_frames, extra_flags

    async def __aenter__(self) -> "RunningDaemon":
        self.relay = RelaySim(FileSource(self.corpus_dir / "frames.bin.zst", loops=1), rate=0)
        await self.relay.start("127.0.0.1", 0)
        cfg = parse_serve_args([
            "--ws-url", self.relay.url, "--listen-addr", "127.0.0.1:0",
            "--data-dir", str(self.tmp_path / "data"), "--override-relay-cursor", str(first_seq(self.frames) - 1),
            "--max-sub-rate", "100000", *self.extra,
        ], environ={})
        self.daemon = Daemon(cfg)
        await self.daemon.start(connect_relay=False)
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.daemon.stop()
        await self.relay.close()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.daemon.port}/subscribe"


async def scrape(port: int) -> str:
    def fetch() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            return response.read().decode()
    return await asyncio.to_thread(fetch)


def sample(text: str, name: str, labels: str = "") -> float | None:
    match = re.search(rf"^{re.escape(name)}{re.escape(labels)} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else None


# --- /healthz ----------------------------------------------------------------------------------

async def test_healthz_is_503_until_the_owner_says_ready(tmp_path):
    state = {"ready": False}
    event_log = EventLog(str(tmp_path / "log"))
    server = SubscribeServer(event_log, LiveRing(16), health=lambda: (state["ready"], {"status": "starting"}))
    await server.start("127.0.0.1", 0)
    try:
        status, headers, body = await http_get(server.port, "/healthz")
        assert status == 503 and headers["content-type"] == "application/json"
        assert json.loads(body)["status"] == "starting"
        state["ready"] = True
        status, _, body = await http_get(server.port, "/healthz")
        assert status == 200 and json.loads(body)["listening"] is True
    finally:
        await server.close()
        event_log.close()


async def test_daemon_healthz_reports_log_listener_and_relay_state(tmp_path, corpus_dir, corpus_frames, expected_v1_lines):
    async with RunningDaemon(tmp_path, corpus_dir, corpus_frames, "--metrics-listen-addr", "") as running:
        status, _, body = await http_get(running.daemon.port, "/healthz")
        report = json.loads(body)
        assert status == 200
        assert (report["status"], report["log_open"], report["listening"]) == ("ok", True, True)
        assert report["relay"]["connected"] is False
        _, client = await connect(running.url)
        running.daemon.connect_relay()
        await client.wait_for_count(len(expected_v1_lines), timeout=30)
        status, _, body = await http_get(running.daemon.port, "/healthz")
        report = json.loads(body)
        assert isinstance(report["relay"].pop("lag_seconds"), float)  # recorded frames: their `time` is long past
        assert report["relay"] == {"connected": True, "cursor": first_seq(corpus_frames) + len(corpus_frames) - 1}


# --- /metrics ----------------------------------------------------------------------------------

async def test_metrics_listener_serves_v1_server_names_with_real_values(tmp_path, corpus_dir, corpus_frames, expected_v1_lines):
    async with RunningDaemon(tmp_path, corpus_dir, corpus_frames, "--metrics-listen-addr", "127.0.0.1:0") as running:
        port = running.daemon.metrics_listener.port
        _, plain = await connect(running.url)
        _, compressed = await connect(running.url + "?compress=true")
        bad_transport, bad = await connect(running.url)
        await settle(lambda: running.daemon.server.connected_count == 3)
        bad_transport.send(WSMsgType.TEXT, b"{not json")
        await settle(lambda: bad.close_code is not None)
        await http_get(running.daemon.port, "/subscribe?cursor=nope")
        running.daemon.connect_relay()
        await plain.wait_for_count(len(expected_v1_lines), timeout=30)
        await compressed.wait_for_count(len(expected_v1_lines), timeout=30)

        text = await scrape(port)
        for name in SERVER_METRICS:
            assert re.search(rf"^# TYPE {name}(_total)? ", text, re.MULTILINE), name
        ip = '{ip_address="127.0.0.1"}'
        plain_bytes = sum(map(len, plain.payloads))
        compressed_bytes = sum(map(len, compressed.payloads))
        assert sample(text, "jetstream_subscribers_connected", ip) == 2
        assert sample(text, "jetstream_server_connected_clients") == 2
        assert sample(text, "jetstream_events_emitted_total") == len(expected_v1_lines)
        assert sample(text, "jetstream_bytes_emitted_total") == plain_bytes  # uncompressed JSON, as v1
        assert sample(text, "jetstream_events_delivered_total", ip) == 2 * len(expected_v1_lines)
        assert sample(text, "jetstream_bytes_delivered_total", ip) == plain_bytes + compressed_bytes
        assert sample(text, "jetstream_server_disconnects_total", '{reason="bad_client_message"}') == 1
        assert sample(text, "jetstream_server_refused_requests_total", '{reason="invalid_options"}') == 1
        assert "consumer_last_seq{" in text  # the consumer's v1 names share the listener


# --- zstd --------------------------------------------------------------------------------------

async def test_zstd_dictionary_route_serves_the_active_dictionary_with_its_id(tmp_path, corpus_dir, corpus_frames):
    legacy = corpus_dir / "legacy_subscribe.zdict"
    async with RunningDaemon(tmp_path / "a", corpus_dir, corpus_frames, "--metrics-listen-addr", "",
                             "--zstd-dictionary", str(legacy)) as running:
        status, headers, body = await http_get(running.daemon.port, "/zstd-dictionary")
        assert (status, body) == (200, legacy.read_bytes())
        assert headers["x-zstd-dictionary-id"] == str(LEGACY_DICTIONARY_ID)
        assert headers["cache-control"] == "public, max-age=300"
        assert headers["content-type"] == "application/octet-stream"
    async with RunningDaemon(tmp_path / "b", corpus_dir, corpus_frames, "--metrics-listen-addr", "") as running:
        status, headers, body = await http_get(running.daemon.port, "/zstd-dictionary")
        assert (status, body) == (200, SHIPPED_DICTIONARY_PATH.read_bytes())
        assert headers["x-zstd-dictionary-id"] == str(SHIPPED_DICTIONARY_ID)


@pytest.mark.parametrize("dictionary_flag", ["--zstd-dictionary", "--zstd-dictionary-path"])
async def test_client_holding_v1_dictionary_decodes_every_frame_to_the_uncompressed_json(
        tmp_path, corpus_dir, corpus_frames, expected_v1_lines, dictionary_flag):
    legacy = (corpus_dir / "legacy_subscribe.zdict").read_bytes()
    async with RunningDaemon(tmp_path, corpus_dir, corpus_frames, "--metrics-listen-addr", "",
                             dictionary_flag, str(corpus_dir / "legacy_subscribe.zdict")) as running:
        _, plain = await connect(running.url)
        _, by_query = await connect(running.url + "?compress=true")
        _, by_header = await connect(running.url, extra_headers={"Socket-Encoding": "gzip, zstd"})
        running.daemon.connect_relay()
        expected = await plain.wait_for_count(len(expected_v1_lines), timeout=30)
        # A v1 client's decoder: the dictionary as a formatted dict, window capped at 128 KiB.
        decoder = zstandard.ZstdDecompressor(dict_data=zstandard.ZstdCompressionDict(legacy), max_window_size=1 << 17)
        for client in (by_query, by_header):
            await client.wait_for_count(len(expected_v1_lines), timeout=30)
            assert {kind for kind, _ in client.messages} == {WSMsgType.BINARY}
            assert [decoder.decompress(frame) for frame in client.payloads] == expected
            for frame, json_bytes in zip(client.payloads, expected):
                header = zstandard.get_frame_parameters(frame)
                assert header.dict_id == LEGACY_DICTIONARY_ID
                assert header.content_size == len(json_bytes)
                assert header.has_checksum and header.window_size <= 1 << 17
        assert {kind for kind, _ in plain.messages} == {WSMsgType.TEXT}


async def test_delivery_counters_of_gone_ips_fold_into_other_beyond_the_label_budget(tmp_path, expected_v1_lines):
    """v1 kept one series per client IP forever; a public endpoint sees millions of them."""
    stack = await Stack(tmp_path, max_ip_metric_labels=2).start()
    try:
        stack.publish(expected_v1_lines[:10])
        for host in ("127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"):
            transport, client = await connect(stack.url + "?cursor=0", local_addr=(host, 0))
            await client.wait_for_count(10)
            transport.disconnect()
            await settle(lambda: stack.server.connected_count == 0)
        _, still_here = await connect(stack.url + "?cursor=0", local_addr=("127.0.0.2", 0))
        await still_here.wait_for_count(10)
        delivered = stack.server.delivered_by_ip()
        # the two most recently gone keep their series; the older two are summed; connected ones always show
        assert set(delivered) == {"127.0.0.4", "127.0.0.5", "other", "127.0.0.2"}
        assert delivered["other"][0] == 20 and delivered["127.0.0.2"][0] == 10
        assert sum(events for events, _ in delivered.values()) == 50
        assert len(stack.server._delivered_gone) == 2
    finally:
        await stack.stop()
