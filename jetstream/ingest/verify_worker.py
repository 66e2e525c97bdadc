"""One verify process of `--verify-processes N` (started by jetstream/ingest/verifypool.py).

Owns: reading batches of commits to check from stdin, checking each with verify.check_commit,
and writing one verdict per commit back on stdout, batch by batch, in the order the batches came.
Wire format, both ways: a 4-byte little-endian length, then a pickle. A request is
(batch id, [(signed commit block, repo, rev, curve, SEC1 point), ...]); an answer is
(batch id, [None or (reason, detail), ...]) in the same order.
It must never touch the log, the network or anything but its two pipes, and never outlive them:
it exits when stdin reaches EOF (the daemon closed it, or the daemon is gone). It ignores SIGINT
and SIGTERM for that reason: a Ctrl-C or a systemd stop reaches the whole process group, and
the daemon, which is the one to decide, closes the pipe when it stops.
"""
from __future__ import annotations

import os
import pickle
import signal
import struct
import sys
from collections import OrderedDict

from jetstream.ingest.verify import KeyFormatError, PublicKey, check_commit

LENGTH = struct.Struct("<I")
KEY_CACHE_SIZE = 10_000  # parsed keys by (curve, point): a key object costs more than a dict look-up


def read_exact(stream, size: int) -> bytes | None:
    """`size` bytes from `stream`, or None at EOF (a partial message at EOF is EOF too)."""
    data = stream.read(size)
    if data is None or len(data) < size:
        return None
    return data


def read_message(stream) -> object | None:
    header = read_exact(stream, LENGTH.size)
    if header is None:
        return None
    body = read_exact(stream, LENGTH.unpack(header)[0])
    return None if body is None else pickle.loads(body)


def encode_message(message: object) -> bytes:
    body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return LENGTH.pack(len(body)) + body


class KeyCache:
    """PublicKey objects by (curve, point), least recently used evicted."""

    def __init__(self, capacity: int = KEY_CACHE_SIZE) -> None:
        self.capacity = capacity
        self._keys: OrderedDict[tuple[str, bytes], PublicKey] = OrderedDict()

    def get(self, curve: str, point: bytes) -> PublicKey:
        key = self._keys.get((curve, point))
        if key is None:
            key = self._keys[(curve, point)] = PublicKey(curve, point)
            if len(self._keys) > self.capacity:
                self._keys.popitem(last=False)
        else:
            self._keys.move_to_end((curve, point))
        return key


def verdict_of(keys: KeyCache, block: bytes, repo: str, rev: str, curve: str, point: bytes):
    """check_commit's verdict; a checker error is a bad signature, as in the ingest loop (sigcheck.py)."""
    try:
        return check_commit(block, repo, rev, keys.get(curve, point))
    except KeyFormatError as exc:
        return "bad_signature", f"key_error={exc.reason}"
    except Exception as exc:  # noqa: BLE001 - one odd commit must not take the batch down
        return "bad_signature", f"checker_error={exc!r:.100}"


def serve(requests, answers) -> None:
    """Answer batches until `requests` reaches EOF."""
    keys = KeyCache()
    while True:
        message = read_message(requests)
        if message is None:
            return
        batch_id, commits = message
        verdicts = [verdict_of(keys, *commit) for commit in commits]
        answers.write(encode_message((batch_id, verdicts)))
        answers.flush()


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    requests = os.fdopen(sys.stdin.fileno(), "rb", buffering=1 << 16, closefd=False)
    answers = os.fdopen(sys.stdout.fileno(), "wb", buffering=1 << 16, closefd=False)
    try:
        serve(requests, answers)
    except BrokenPipeError:
        os._exit(0)  # the daemon is gone: nobody is left to answer (and no flush-at-exit to fail)


if __name__ == "__main__":
    main()
