"""Hostile clients against the real SubscribeServer over loopback (issue 7, "Hostile clients").

Each test pins two things: what the hostile client gets (HTTP status, close code and
reason, or a plain TCP close), and that a well-behaved witness client — connected from
another loopback address (127.0.0.2), so per-IP limits never touch it — keeps receiving
every published event, in order, while and after the hostile client does its thing.
Events are the corpus' real v1 JSON lines with fresh time_us values.
"""
from __future__ import annotations

import asyncio
import json
import socket
import struct

import pytest
from picows import WSCloseCode, WSMsgType

from jetstream.config import parse_serve_args
from jetstream.implementation import LiveRing
from jetstream.log.store import EventLog
from jetstream.server.app import SubscribeServer
from jetstream.server.settings import ServerSettings
from tests.corpus_events import event_from_line, time_us_of
from tests.wsclient import connect

pytestmark = pytest.mark.timeout(120)

WITNESS_ADDR = ("127.0.0.2", 0)
UPGRADE_HEADERS = (
    "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
)


async def settle(predicate, timeout: float = 10.0) -> None:
    async def _wait():
        while not predicate():
            await asyncio.sleep(0.01)
    await asyncio.wait_for(_wait(), timeout)


class Witnessed:
    """Real log + ring + server, plus a witness client that must see every event in order."""

    def __init__(self, tmp_path, lines: list[bytes], **settings) -> None:
        self.event_log = EventLog(str(tmp_path / "log"))
        self.ring = LiveRing(100_000, floor_time_us=self.event_log.hwm())
        settings.setdefault("max_sub_rate", 1_000_000.0)
        self.server = SubscribeServer(self.event_log, self.ring, ServerSettings(**settings))
        self.lines = lines
        self.published: list[int] = []
        self.next_time_us = 1_700_000_000_000_000
        self.witness = None

    async def __aenter__(self) -> "Witnessed":
        await self.server.start("127.0.0.1", 0)
        _, self.witness = await connect(self.url, local_addr=WITNESS_ADDR)
        await settle(lambda: self.server.connected_count == 1)
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.server.close(grace_s=0.5)
        self.event_log.close()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.server.port}/subscribe"

    def publish(self, count: int) -> None:
        events = []
        for index in range(count):
            self.next_time_us += 3
            events.append(event_from_line(self.lines[index % len(self.lines)], self.next_time_us))
        self.event_log.append(events, relay_cursor=None)
        for event in events:
            self.ring.append(event)
        self.published += [event.time_us for event in events]
        self.server.notify_new_events()

    async def witness_saw_everything(self, more: int = 20) -> None:
        """Publish `more` events, then the witness must hold exactly all published, in order."""
        self.publish(more)
        await self.witness.wait_for_count(len(self.published), timeout=30)
        await asyncio.sleep(0.05)
        assert [time_us_of(m) for m in self.witness.payloads] == self.published
        assert self.witness.close_code is None


# --- raw sockets: what a client that is not a websocket library sees -------------------------

async def raw_request(port: int, head: bytes, read_timeout: float = 10.0) -> bytes:
    """Send `head` and read until the server closes (or read_timeout): the raw answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), read_timeout)
    except ConnectionResetError:
        return b""
    finally:
        writer.close()


def upgrade_request(target: str) -> bytes:
    return f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n{UPGRADE_HEADERS}\r\n".encode()


def status_of(answer: bytes) -> int | None:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else None


# --- the tests -------------------------------------------------------------------------------

CONNECTION_ATTEMPTS = 2_000
CONNS_PER_IP = 100


async def _attempt(port: int, held: list) -> int | None:
    """One upgrade attempt; keeps 101s open in `held`; the HTTP status."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return None
    writer.write(upgrade_request("/subscribe"))
    try:
        status_line = await asyncio.wait_for(reader.readline(), 30)
    except (asyncio.TimeoutError, ConnectionError):
        writer.close()
        return None
    status = status_of(status_line)
    if status == 101:
        held.append(writer)
    else:
        writer.close()
    return status


async def test_thousands_of_attempts_from_one_ip_hold_the_cap_and_others_are_served(tmp_path, expected_v1_lines):
    async with Witnessed(tmp_path, expected_v1_lines, max_conns_per_ip=CONNS_PER_IP) as served:
        held: list = []
        statuses: list = []
        for start in range(0, CONNECTION_ATTEMPTS, 200):  # waves: bounded fds on a shared machine
            statuses += await asyncio.gather(*(_attempt(served.server.port, held)
                                               for _ in range(start, min(start + 200, CONNECTION_ATTEMPTS))))
            served.publish(5)  # the witness is streaming throughout the flood
        print(f"hostile: attempts={CONNECTION_ATTEMPTS} upgraded={statuses.count(101)} "
              f"refused_429={statuses.count(429)} other={len(statuses) - statuses.count(101) - statuses.count(429)}")
        assert statuses.count(101) == CONNS_PER_IP
        assert statuses.count(429) == CONNECTION_ATTEMPTS - CONNS_PER_IP
        assert served.server.connected_by_ip() == {"127.0.0.1": CONNS_PER_IP, "127.0.0.2": 1}
        assert served.server.refused_requests["too_many_connections"] == CONNECTION_ATTEMPTS - CONNS_PER_IP
        await served.witness_saw_everything()
        # Another client from another address is still let in while the flooder is at its cap.
        _, newcomer = await connect(served.url, local_addr=("127.0.0.3", 0))
        served.publish(3)
        assert len(await newcomer.wait_for_count(3)) == 3
        for writer in held:
            writer.close()
        await settle(lambda: served.server.connected_by_ip().get("127.0.0.1", 0) == 0)


async def test_half_open_and_slowloris_handshakes_are_closed_by_the_handshake_timeout(tmp_path, expected_v1_lines):
    assert ServerSettings().handshake_timeout_s == 5.0  # what picows' websocket_handshake_timeout is given
    async with Witnessed(tmp_path, expected_v1_lines) as served:
        port = served.server.port
        loop = asyncio.get_running_loop()
        started = loop.time()
        half_open = asyncio.ensure_future(raw_request(port, b"", read_timeout=30))

        async def slowloris() -> tuple[bytes, float]:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            request = upgrade_request("/subscribe")[:-2]  # never the final blank line
            answer = b""
            for byte_at in range(len(request)):
                try:
                    writer.write(request[byte_at:byte_at + 1])  # one byte every 0.25 s
                    await writer.drain()
                except ConnectionError:
                    break
                if reader.at_eof():
                    break
                try:
                    answer += await asyncio.wait_for(reader.read(100), 0.25)
                except asyncio.TimeoutError:
                    continue
                if not answer or reader.at_eof():
                    break
            writer.close()
            return answer, loop.time() - started

        slow_answer, slow_closed_after = await slowloris()
        half_open_answer = await half_open
        half_open_closed_after = loop.time() - started
        # Both get a bare TCP close (no HTTP answer) once the 5 s handshake timeout passes.
        assert slow_answer == b"" and half_open_answer == b""
        assert 4.0 < slow_closed_after < 20 and 4.0 < half_open_closed_after < 20
        await served.witness_saw_everything()


async def test_handshake_timeout_flag_sets_how_long_a_half_open_connection_may_wait(tmp_path, expected_v1_lines):
    cfg = parse_serve_args(["--handshake-timeout", "1s"], environ={})
    assert cfg.handshake_timeout == 1.0
    async with Witnessed(tmp_path, expected_v1_lines, handshake_timeout_s=cfg.handshake_timeout) as served:
        loop = asyncio.get_running_loop()
        started = loop.time()
        answer = await raw_request(served.server.port, b"GET /subscribe HTTP/1.1\r\n", read_timeout=30)
        closed_after = loop.time() - started
        assert answer == b"" and 0.8 < closed_after < 4.0  # the default (5 s) would take longer
        served.publish(3)
        await served.witness_saw_everything()


async def test_long_request_heads_are_read_up_to_go_limit_and_refused_beyond_it(tmp_path, expected_v1_lines):
    """Heads up to --max-request-bytes (1 MiB, Go's default) are parsed; longer ones get Go's 431.

    picows alone hangs up at 16 KiB without an answer; the front door (server/front.py)
    reads the head first, so v1's `too many wanted DIDs` 400 is reachable from the URL.
    """
    async with Witnessed(tmp_path, expected_v1_lines) as served:
        port = served.server.port
        huge_query = "/subscribe?wantedCollections=" + "a" * 100_000
        answer = await raw_request(port, upgrade_request(huge_query))
        assert status_of(answer) == 400 and answer.endswith(b"invalid collection: " + b"a" * 100_000)
        dids = "&".join(f"wantedDids=did:plc:{index:024d}" for index in range(10_001))
        answer = await raw_request(port, upgrade_request("/subscribe?" + dids))
        assert status_of(answer) == 400 and answer.endswith(b"invalid subscriber options: too many wanted DIDs")
        # Found by this test: a cursor of 15,000 digits made int() raise (a 500 quoting the
        # exception); parse_go_int64 now refuses it as out of range, v1's 400.
        small_bad = await raw_request(port, upgrade_request("/subscribe?cursor=" + "9" * 15_000))
        assert status_of(small_bad) == 400 and small_bad.endswith(b"invalid cursor: " + b"9" * 15_000)
        over_limit = await raw_request(port, upgrade_request("/subscribe?wantedCollections=" + "a" * (1 << 20)))
        assert over_limit.startswith(b"HTTP/1.0 431 ")  # Go writes this one as HTTP/1.0
        endless = await raw_request(port, b"GET /subscribe?" + b"a" * (1 << 20) + b"b" * 70_000)  # no end of head
        assert endless.startswith(b"HTTP/1.0 431 ")
        # over picows' 16 KiB with a request line that cannot be split into method, target, version
        malformed = await raw_request(port, b"GET /subscribe?" + b"a" * 20_000 + b" HTTP/1.1 extra\r\nHost: x\r\n\r\n")
        assert malformed.startswith(b"HTTP/1.0 431 ")
        assert served.server.connected_count == 1
        await served.witness_saw_everything()


async def test_client_that_never_reads_is_bounded_and_dropped_with_a_reason(tmp_path, expected_v1_lines):
    # what the daemon sets from --max-lag-events 2000 --max-lag-grace 0.5s
    async with Witnessed(tmp_path, expected_v1_lines, max_lag_events=2_000, max_lag_grace_s=0.5) as served:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", served.server.port))
        sock.send(upgrade_request("/subscribe"))
        await settle(lambda: served.server.connected_count == 2)
        stuck = next(s for s in served.server.subscribers if s.client_ip == "127.0.0.1")
        biggest_buffer = 0
        for _ in range(60):
            served.publish(200)
            await asyncio.sleep(0.02)
            if stuck.transport is None or stuck not in served.server.subscribers:
                break
            biggest_buffer = max(biggest_buffer, stuck.transport.underlying_transport.get_write_buffer_size())
        await settle(lambda: served.server.disconnects["lag_events"] == 1, timeout=30)
        print(f"hostile: never-reading client: biggest server write buffer {biggest_buffer} bytes, "
              f"sent {stuck.sent_events} events before the drop")
        # Bounded: one step (<= 256 KiB of frames) past the transport's high-water mark.
        assert 0 < biggest_buffer < 512 * 1024
        assert stuck.transport.close_handshake.sent.code == WSCloseCode.POLICY_VIOLATION
        assert stuck.transport.close_handshake.sent.reason.startswith("consuming too slowly")
        # It cannot read its close frame (behind the buffered events); the server would abort it
        # after CLOSE_DRAIN_GRACE_S (10 s). Hanging up here keeps the test short.
        sock.close()
        await settle(lambda: served.server.connected_count == 1)
        await served.witness_saw_everything()


def close_payload(code: int | None, reason: bytes = b"") -> bytes:
    return b"" if code is None else struct.pack(">H", code) + reason


@pytest.mark.parametrize("payload, expect_code", [
    (close_payload(999), WSCloseCode.PROTOCOL_ERROR),  # below the 1000 floor
    (close_payload(1005), WSCloseCode.PROTOCOL_ERROR),  # "no status" must never be on the wire
    (close_payload(1006), WSCloseCode.PROTOCOL_ERROR),  # found here: was echoed as a 1006 on the wire
    (close_payload(1015), WSCloseCode.PROTOCOL_ERROR),
    (close_payload(2999), WSCloseCode.PROTOCOL_ERROR),  # reserved range
    (b"\x03", WSCloseCode.PROTOCOL_ERROR),  # a 1-byte close payload
    (close_payload(1000, b"\xff\xfe"), WSCloseCode.INVALID_TEXT),  # reason not UTF-8 (picows answers)
    (close_payload(4321, b"bye"), 4321),  # a private-use code is fine: echoed
    (close_payload(None), WSCloseCode.NO_INFO),  # empty close: answered with an empty close
])
async def test_close_frames_with_bad_codes_get_a_close_and_never_hurt_others(tmp_path, expected_v1_lines,
                                                                             payload, expect_code):
    async with Witnessed(tmp_path, expected_v1_lines) as served:
        transport, hostile = await connect(served.url)
        transport.send(WSMsgType.CLOSE, payload)
        await settle(lambda: served.server.connected_count == 1)
        await asyncio.wait_for(transport.wait_disconnected(), 10)
        assert hostile.close_code == expect_code
        await served.witness_saw_everything()


async def test_invalid_utf8_text_frame_closes_with_a_reason_like_v1(tmp_path, expected_v1_lines):
    async with Witnessed(tmp_path, expected_v1_lines) as served:
        transport, hostile = await connect(served.url)
        transport.send(WSMsgType.TEXT, b'{"type":"options_update","payload":{"wantedDids":["\xff\xfe"]}}')
        await asyncio.wait_for(transport.wait_disconnected(), 10)
        # Go decodes invalid UTF-8 as U+FFFD, so the DID is simply not a valid DID.
        assert (hostile.close_code, hostile.close_reason) == (
            WSCloseCode.OK, "failed to parse subscriber options: invalid subscriber options")
        transport, bare = await connect(served.url)
        transport.send(WSMsgType.TEXT, b"\xff\xfe\xfd")
        await asyncio.wait_for(transport.wait_disconnected(), 10)
        assert bare.close_code == WSCloseCode.OK
        assert bare.close_reason.startswith("failed to unmarshal subscriber sourced message: invalid character")
        await served.witness_saw_everything()


async def test_binary_frames_and_ping_floods_are_ignored_or_answered_and_the_stream_goes_on(tmp_path,
                                                                                           expected_v1_lines):
    async with Witnessed(tmp_path, expected_v1_lines) as served:
        transport, hostile = await connect(served.url)
        served.publish(10)
        for index in range(5_000):
            transport.send(WSMsgType.BINARY, b"\x00\xff" * 50)
            transport.send_ping(b"%d" % index)
        served.publish(10)
        # The hostile client itself is still a subscriber and got every event too.
        received = await hostile.wait_for_count(20, timeout=30)
        assert [time_us_of(m) for m in received] == served.published
        assert hostile.close_code is None and served.server.connected_count == 2
        await served.witness_saw_everything()
        transport.disconnect()


async def test_deeply_nested_and_huge_options_updates_are_refused_with_a_reason(tmp_path, expected_v1_lines):
    async with Witnessed(tmp_path, expected_v1_lines) as served:
        outcomes = {}
        messages = {
            "nested_100k": b'{"type":"options_update","payload":' + b"[" * 100_000 + b"]" * 100_000 + b"}",
            "nested_in_a_field": b'{"type":"options_update","payload":{"wantedDids":' + b"[" * 50_000 + b"}}",
            "dids_10001": json.dumps({"type": "options_update", "payload": {
                "wantedDids": [f"did:plc:{index:024d}" for index in range(10_001)]}}).encode(),
            "number_of_5000_digits": b'{"type":"options_update","payload":{"maxMessageSizeBytes":' + b"9" * 5000 + b"}}",
            "nine_megabytes": json.dumps({"type": "options_update", "payload": {
                "wantedCollections": ["app.bsky.feed.post"], "pad": "x" * 9_000_000}}).encode(),
        }
        for name, message in messages.items():
            transport, hostile = await connect(served.url)
            transport.send(WSMsgType.TEXT, message)
            try:
                await asyncio.wait_for(transport.wait_disconnected(), 5)
            except asyncio.TimeoutError:
                transport.disconnect()
            outcomes[name] = (hostile.close_code, hostile.close_reason)
            await settle(lambda: served.server.connected_count == 1)
            await served.witness_saw_everything()
        print("hostile: options_update outcomes", outcomes)
        assert outcomes["nested_100k"][0] == WSCloseCode.OK
        assert "exceeded max depth" in outcomes["nested_100k"][1]
        assert outcomes["nested_in_a_field"][0] == WSCloseCode.OK
        assert outcomes["dids_10001"] == (WSCloseCode.OK, "failed to parse subscriber options: invalid subscriber options: "
                                                    "too many wanted DIDs")  # docs/protocol.md §3.8
        # Found by this test: int() raised on numbers over 4300 digits (fixed in gojson._go_int).
        assert outcomes["number_of_5000_digits"][0] == WSCloseCode.OK
        assert outcomes["number_of_5000_digits"][1].startswith("failed to unmarshal subscriber options update: json: "
                                                               "cannot unmarshal number 9999")
        assert outcomes["nine_megabytes"] == (None, None)  # unknown fields ignored, as v1: still connected


async def test_messages_sent_while_require_hello_is_pending_are_handled_like_any_other(tmp_path,
                                                                                      expected_v1_lines):
    async with Witnessed(tmp_path, expected_v1_lines) as served:
        transport, hello = await connect(served.url + "?requireHello=true")
        await settle(lambda: served.server.connected_count == 2)
        transport.send(WSMsgType.TEXT, b'{"type":"something_else","payload":{}}')  # ignored
        transport.send(WSMsgType.BINARY, b"\x01\x02")  # ignored
        transport.send_ping(b"p")
        served.publish(5)
        await asyncio.sleep(0.2)
        assert hello.messages == [] and hello.close_code is None  # nothing before a hello
        transport.send(WSMsgType.TEXT, b'{"type":"options_update","payload":{}}')
        served.publish(5)
        # Its position was fixed at connect: what was published while it waited comes first.
        await hello.wait_for_count(10)
        await asyncio.sleep(0.1)
        assert [time_us_of(m) for m in hello.payloads] == served.published[-10:]
        transport.send(WSMsgType.TEXT, b"{not json")
        await asyncio.wait_for(transport.wait_disconnected(), 5)
        assert hello.close_code == WSCloseCode.OK
        assert hello.close_reason.startswith("failed to unmarshal subscriber sourced message")
        await served.witness_saw_everything()
