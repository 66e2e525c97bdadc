"""Seed corpora for the atheris harnesses, written to build/fuzz/<target>/seeds/.

Owns: choosing seed inputs per target from relay-sim (synthetic and fault frames) and
from the recorded relay frames in tests/data/, plus a few
hand-written client requests. It must never write into the source tree: seeds are build
output, regenerated on every `make fuzz`.
"""
from __future__ import annotations

import hashlib
import random
import sys
from pathlib import Path

import libipld

from jetstream.framefile import read_frames
from jetstream.ingest.car import read_car
from jetstream.relaysim.faults import error_frame, garbage_frame, info_frame, sync_frame, too_big_frame
from jetstream.relaysim.synthetic import SyntheticSource

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = REPO_ROOT / "tests" / "data"

QUERIES = [b"", b"wantedCollections=app.bsky.feed.post", b"wantedCollections=app.bsky.*&wantedDids=did:plc:abc",
           b"cursor=1700000000000000&compress=true", b"cursor=abc", b"maxMessageSizeBytes=5000000000",
           b"requireHello=true&wantedCollections=a.b.c&wantedCollections=%zz", b"wantedDids=did%3Aweb%3Aexample.com"]
MESSAGES = [b'{"type":"options_update","payload":{"wantedCollections":["app.bsky.feed.post"]}}',
            b'{"type":"options_update","payload":{"wantedDids":["did:plc:ewvi7nxzyoun6zhxrhs64oiz"],'
            b'"maxMessageSizeBytes":1000}}',
            b'{"type":"options_update","payload":null}', b'{"Type":"other"}', b'[1,2', b'{"type":1}']
REQUESTS = [b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET /subscribe?wantedCollections=app.bsky.feed.post HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
            b"GET /subscribe?cursor=abc HTTP/1.1\r\nHost: x\r\n\r\n", b"POST /healthz HTTP/1.0\r\n\r\n",
            b"GET /zstd-dictionary HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 1.2.3.4\r\n\r\n"]


def relay_frames() -> list[bytes]:
    source = SyntheticSource(seed=11, dids=200)
    frames = [source.frame(seq) for seq in range(source.first_seq, source.first_seq + 300)]
    rng = random.Random(5)
    did = "did:plc:seedsseedsseedsseedsseed"
    frames += [garbage_frame(rng), too_big_frame(rng, 1, did, 1_700_000_000_000_000),
               sync_frame(rng, 2, did, 1_700_000_000_000_000), error_frame("ConsumerTooSlow", "slow"),
               info_frame("OutdatedCursor", "old")]
    corpus = DATA_DIR / "frames.bin.zst"
    if corpus.exists():
        frames += read_frames(corpus)
    else:
        print(f"seeds: no corpus at {corpus}; relay-sim seeds only", file=sys.stderr)
    return frames


def cars_and_records(frames: list[bytes]) -> tuple[list[bytes], list[bytes]]:
    cars, records = [], []
    for frame in frames:
        try:
            header, body = libipld.decode_dag_cbor_multi(frame)
        except ValueError:
            continue
        if header.get("t") != "#commit" or not body.get("blocks"):
            continue
        cars.append(body["blocks"])
        car = read_car(body["blocks"])
        records += [bytes(car.blocks[op["cid"]]) for op in body["ops"] if op.get("cid") in car.blocks]
    return cars, records


def write_seeds(out_dir: Path, target: str, inputs: list[bytes]) -> None:
    seeds = out_dir / target / "seeds"
    seeds.mkdir(parents=True, exist_ok=True)
    (out_dir / target / "corpus").mkdir(exist_ok=True)
    for data in inputs:
        (seeds / hashlib.sha1(data).hexdigest()).write_bytes(data)
    print(f"seeds: {target}: {len(inputs)} inputs", file=sys.stderr)


def main(out_dir: Path) -> None:
    frames = relay_frames()
    cars, records = cars_and_records(frames)
    write_seeds(out_dir, "decode_frame", frames)
    write_seeds(out_dir, "car", cars)
    write_seeds(out_dir, "record_json", records)
    # fuzz_params splits on its first byte: even -> query string, odd -> client message.
    write_seeds(out_dir, "params", [b"\x00" + q for q in QUERIES] + [b"\x01" + m for m in MESSAGES])
    write_seeds(out_dir, "http_upgrade", REQUESTS)
    write_seeds(out_dir, "signatures", signature_inputs(frames))


def signature_inputs(frames: list[bytes]) -> list[bytes]:
    """fuzz_signatures: multikeys (0), DID documents (1) and signed commit blocks (2) from tests/data."""
    import json

    import zstandard

    raw = (REPO_ROOT / "tests" / "data" / "did_docs.json.zst").read_bytes()
    docs = json.loads(zstandard.ZstdDecompressor().decompress(raw, max_output_size=1 << 26))
    inputs = []
    for document in list(docs.values())[:20]:
        inputs.append(b"\x01" + json.dumps(document).encode())
        inputs.append(b"\x00" + document["verificationMethod"][0]["publicKeyMultibase"].encode())
    for car_bytes in cars_and_records(frames)[0][:20]:
        car = read_car(car_bytes)
        inputs.append(b"\x02" + bytes(car.blocks[car.roots[0]]))
    return inputs


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else REPO_ROOT / "build" / "fuzz"))
