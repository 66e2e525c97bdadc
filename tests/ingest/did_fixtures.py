"""Test kit for --verify-signatures: a fake DID directory over real HTTP, signed commit frames, a gated pipeline.

The directory is a real aiohttp server on an ephemeral loopback port: `GET /<did>` answers like
plc.directory, `GET /.well-known/did.json` answers for `did:web:127.0.0.1%3A<port>`. Frames are
built with the relay simulator's DAG-CBOR encoder and signed with real keys (cryptography).
"""
from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path

import zstandard
from aiohttp import web
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from jetstream.compression import EventCompressor
from jetstream.core import LiveRing
from jetstream.ingest.didres import DidResolver
from jetstream.ingest.pipeline import IngestPipeline
from jetstream.ingest.sequencer import Sequencer
from jetstream.ingest.sigcheck import RevTracker, SignatureGate
from jetstream.ingest.verify import CURVE_K256, CURVE_ORDERS, CURVE_P256, encode_multikey
from jetstream.relaysim.cbor import Link, cid_for_block, encode
from jetstream.relaysim.synthetic import encode_car, tid

CURVES = {CURVE_K256: ec.SECP256K1(), CURVE_P256: ec.SECP256R1()}


def load_corpus_did_docs(corpus_dir: Path) -> dict[str, dict]:
    raw = (corpus_dir / "did_docs.json.zst").read_bytes()
    return json.loads(zstandard.ZstdDecompressor().decompress(raw, max_output_size=1 << 26))


class FakeDidDirectory:
    """plc.directory and did:web hosting in one HTTP server; counts requests per DID."""

    def __init__(self, docs: dict[str, dict] | None = None) -> None:
        self.docs: dict[str, dict] = dict(docs or {})
        self.requests: Counter[str] = Counter()
        self.delay_s = 0.0
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def web_did(self) -> str:
        """The did:web this server hosts."""
        return f"did:web:127.0.0.1%3A{self.port}"

    async def start(self) -> "FakeDidDirectory":
        app = web.Application()
        app.router.add_get("/.well-known/did.json", self._did_web)
        app.router.add_get("/{did}", self._plc)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]
        return self

    async def _answer(self, did: str) -> web.Response:
        self.requests[did] += 1
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        document = self.docs.get(did)
        if document is None:
            return web.Response(status=404, text="DID not registered")
        return web.json_response(document)

    async def _plc(self, request: web.Request) -> web.Response:
        return await self._answer(request.match_info["did"])

    async def _did_web(self, request: web.Request) -> web.Response:
        return await self._answer(self.web_did)

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


def did_document(did: str, multikey: str, key_type: str = "Multikey") -> dict:
    return {
        "@context": ["https://www.w3.org/ns/did/v1", "https://w3id.org/security/multikey/v1"],
        "id": did,
        "alsoKnownAs": ["at://someone.test"],
        "verificationMethod": [{"id": f"{did}#atproto", "type": key_type, "controller": did,
                                "publicKeyMultibase": multikey}],
        "service": [{"id": "#atproto_pds", "type": "AtprotoPersonalDataServer",
                     "serviceEndpoint": "https://pds.test"}],
    }


class Signer:
    """A real key pair on one of atproto's curves."""

    def __init__(self, curve: str = CURVE_K256) -> None:
        self.curve = curve
        self.private = ec.generate_private_key(CURVES[curve])

    def point(self) -> bytes:
        return self.private.public_key().public_bytes(serialization.Encoding.X962,
                                                      serialization.PublicFormat.CompressedPoint)

    def multikey(self) -> str:
        return encode_multikey(self.curve, self.point())

    def document(self, did: str) -> dict:
        return did_document(did, self.multikey())

    def sign(self, message: bytes, high_s: bool = False) -> bytes:
        """Raw r||s, low-S unless asked for the other (equally valid to plain ECDSA) form."""
        r, s = decode_dss_signature(self.private.sign(message, ec.ECDSA(hashes.SHA256())))
        order = CURVE_ORDERS[self.curve]
        if (s > order // 2) != high_s:
            s = order - s
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def signed_commit_frame(signer: Signer, did: str, rev: str, seq: int, *, text: str = "hello",
                        high_s: bool = False, block_did: str | None = None) -> bytes:
    """A #commit frame creating one app.bsky.feed.post, its commit block signed by `signer`."""
    record = encode({"$type": "app.bsky.feed.post", "text": text, "createdAt": "2026-07-04T14:39:14.000Z"})
    record_cid = cid_for_block(record)
    path = f"app.bsky.feed.post/{rev}"
    mst = encode({"l": None, "e": [{"p": 0, "k": path.encode(), "v": Link(record_cid), "t": None}]})
    mst_cid = cid_for_block(mst)
    unsigned = {"did": block_did or did, "version": 3, "data": Link(mst_cid), "rev": rev, "prev": None}
    signed = encode({**unsigned, "sig": signer.sign(encode(unsigned), high_s=high_s)})
    commit_cid = cid_for_block(signed)
    car = encode_car(commit_cid, [(commit_cid, signed), (mst_cid, mst), (record_cid, record)])
    body = {"ops": [{"action": "create", "path": path, "cid": Link(record_cid), "prev": None}],
            "rev": rev, "seq": seq, "repo": did, "time": "2026-07-04T14:39:14.000Z", "blobs": [],
            "since": None, "blocks": car, "commit": Link(commit_cid), "rebase": False, "tooBig": False}
    return encode({"op": 1, "t": "#commit"}) + encode(body)


def identity_frame(did: str, seq: int) -> bytes:
    return encode({"op": 1, "t": "#identity"}) + encode({"did": did, "seq": seq, "time": "2026-07-04T14:39:15.000Z"})


def rev_at(time_us: int, clock_id: int = 0) -> str:
    return tid(time_us, clock_id)


class GatedPipeline:
    """A real pipeline (RocksDB log in `path`, ring, sequencer, zstd) behind a SignatureGate.

    `verify_processes` (gate option): 0 checks signatures in the loop, N > 0 in N real verify processes.
    """

    def __init__(self, path: Path, plc_url: str, *, did_web_scheme: str = "http", timeout_s: float = 2.0,
                 negative_ttl_s: float = 60.0, **gate_options) -> None:
        from jetstream.log.store import EventLog

        self.event_log = EventLog(str(path))
        self.ring = LiveRing(10_000, floor_time_us=self.event_log.hwm())
        self.pipeline = IngestPipeline(self.event_log, self.ring, Sequencer(self.event_log.hwm()), EventCompressor(),
                                       lambda: None, socket_url="test", group_commit_s=0.001)
        self.resolver = DidResolver(plc_url=plc_url, cache_size=10_000, cache_ttl_s=3600, negative_ttl_s=negative_ttl_s,
                                    timeout_s=timeout_s, max_concurrency=8, max_doc_bytes=65_536,
                                    did_web_scheme=did_web_scheme)
        self.gate = SignatureGate(self.pipeline, self.resolver, RevTracker(self.event_log.last_rev, 1000),
                                  **gate_options)
        self.pipeline.attach_gate(self.gate)

    async def run(self, frames: list[bytes], timeout: float = 20.0) -> None:
        """Submit `frames` as the relay client would, and wait until every one is written."""
        for frame in frames:
            self.pipeline.submit(frame)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.gate.held_count() or self.pipeline._pending:
            assert loop.time() < deadline, f"{self.gate.held_count()} frames still held"
            await asyncio.sleep(0.01)
        self.pipeline.flush()

    def event_lines(self) -> list[bytes]:
        return [row.payload for row in self.event_log.read_after(0, 1_000_000, compressed=False)]

    async def close(self) -> None:
        await self.gate.close()
        self.event_log.close()
