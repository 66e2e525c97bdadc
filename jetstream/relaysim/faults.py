"""Fault injection for the fake relay: which bad frames and connection faults happen where.

Owns: the fault plan (`Faults`: each kind off, every N-th seq, or a probability per seq,
all decided from (seed, kind, seq) so a run is reproducible) and the bytes of each faulty
frame. At a faulty seq s the relay sends, in this order:

  garbage, truncated, info        inserted before s; they carry no seq
  too_big | sync                  replace the frame of seq s (they take its seq)
  the frame of seq s              unless replaced
  duplicate                       what was just sent for s, again (same seq twice)
  regress                         what was sent for the previous seq (a seq lower than s)
  error | disconnect              then the connection ends: an error frame (op -1) and a
                                  close frame, or a TCP close with no close frame

`truncated` is the first half of what is sent for s. A connection fault fires once per
seq per relay (the first connection to send s gets it), so a client that resumes from a
cursor at or before s is not cut off there again.
It must never do I/O or keep per-connection state: the server asks `step_at` and sends.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable

import xxhash

from jetstream.relaysim.cbor import Link, cid_for_block, encode
from jetstream.relaysim.synthetic import BASE_TIME_US, FRAME_INTERVAL_US, encode_car, rfc3339_ms, tid

BEFORE_KINDS = ("garbage", "truncated", "info")
REPLACE_KINDS = ("too_big", "sync")  # too_big wins when both hit one seq
AFTER_KINDS = ("duplicate", "regress")
CONNECTION_KINDS = ("error", "disconnect")  # error wins when both hit one seq
FAULT_KINDS = BEFORE_KINDS + REPLACE_KINDS + AFTER_KINDS + CONNECTION_KINDS

ERROR_NAME = "ConsumerTooSlow"
INFO_NAME = "OutdatedCursor"
_ERROR_HEADER = encode({"op": -1})
_INFO_HEADER = encode({"op": 1, "t": "#info"})
_COMMIT_HEADER = encode({"op": 1, "t": "#commit"})
_SYNC_HEADER = encode({"op": 1, "t": "#sync"})
_FIRED_MEMORY = 100_000  # connection faults remembered as fired (bounded)


def parse_rate(value: float | int) -> tuple[int, float]:
    """A fault setting as (every, probability): 0 = off, an integer N >= 1 = every N-th
    seq, a number strictly between 0 and 1 = that probability per seq."""
    if value == 0:
        return 0, 0.0
    if 0 < value < 1:
        return 0, float(value)
    if value >= 1 and float(value).is_integer():
        return int(value), 0.0
    raise ValueError(f"fault rate must be 0, an integer >= 1 (every N frames) or a probability in (0, 1), got {value}")


@dataclass(frozen=True)
class Faults:
    """Per kind: 0 (off), N (every N-th seq: seqs first_seq+N-1, first_seq+2N-1, ...), or a
    probability in (0, 1) per seq. `seed` decides the probabilistic ones and the garbage."""

    garbage: float = 0
    truncated: float = 0
    info: float = 0
    too_big: float = 0
    sync: float = 0
    duplicate: float = 0
    regress: float = 0
    error: float = 0
    disconnect: float = 0
    seed: int = 1

    def __post_init__(self) -> None:
        for kind in FAULT_KINDS:
            parse_rate(getattr(self, kind))  # fail at construction, not mid-stream

    @classmethod
    def from_config(cls, cfg) -> "Faults":
        """From RELAY_SIM_FLAGS (--fault-garbage etc. and --seed)."""
        return cls(seed=cfg.seed, **{kind: getattr(cfg, f"fault_{kind}") for kind in FAULT_KINDS})

    @property
    def enabled(self) -> tuple[str, ...]:
        return tuple(kind for kind in FAULT_KINDS if getattr(self, kind))

    def hits(self, kind: str, seq: int, first_seq: int) -> bool:
        """Does fault `kind` happen at `seq`?"""
        every, probability = parse_rate(getattr(self, kind))
        if every:
            return (seq - first_seq + 1) % every == 0
        if probability:
            return xxhash.xxh64_intdigest(b"%s:%d" % (kind.encode(), seq), self.seed) < probability * 2**64
        return False


@dataclass(frozen=True)
class Step:
    """The fault kinds that hit one seq, in the order the module docstring gives."""

    before: tuple[str, ...]
    replace: str | None
    after: tuple[str, ...]
    connection: str | None


class FaultInjector:
    """Renders the frames a relay sends for each seq under `faults` (sim-wide state: which
    connection faults already fired)."""

    def __init__(self, faults: Faults, source) -> None:
        self.faults = faults
        self.source = source
        self.first_seq = source.first_seq
        self._enabled = faults.enabled
        self._fired: set[int] = set()
        self.injected = {kind: 0 for kind in FAULT_KINDS}

    def step_at(self, seq: int) -> Step | None:
        """The faults at `seq` (None when there are none; the common, fast case)."""
        if not self._enabled:
            return None
        hit = [kind for kind in self._enabled if self.faults.hits(kind, seq, self.first_seq)]
        if not hit:
            return None
        connection = next((kind for kind in CONNECTION_KINDS if kind in hit), None)
        if connection is not None and seq in self._fired:
            connection = None
        step = Step(tuple(k for k in BEFORE_KINDS if k in hit), next((k for k in REPLACE_KINDS if k in hit), None),
                    tuple(k for k in AFTER_KINDS if k in hit), connection)
        if not (step.before or step.replace or step.after or step.connection):
            return None
        return step

    def frame_at(self, seq: int, pull: Callable[[int], bytes]) -> bytes:
        """What stands at `seq` in the stream: its replacement, if a fault replaces it."""
        for kind in REPLACE_KINDS:
            if kind in self._enabled and self.faults.hits(kind, seq, self.first_seq):
                return self._render_replacement(kind, seq)
        return pull(seq)

    def frames_for(self, step: Step, seq: int, pull: Callable[[int], bytes]) -> list[bytes]:
        """Every frame sent for `seq` under `step`, in order (the connection fault's error
        frame last, if any); `pull(seq)` gives the normal frame of a seq."""
        main = self._render_replacement(step.replace, seq) if step.replace else pull(seq)
        frames = [self._render_before(kind, seq, main) for kind in step.before]
        frames.append(main)
        if "duplicate" in step.after:
            frames.append(main)
        if "regress" in step.after:
            previous = self.source.last_seq_at_or_before(seq - 1)
            if previous is not None:  # nothing lower exists before the first frame
                frames.append(self.frame_at(previous, pull))
        if step.connection == "error":
            frames.append(error_frame(ERROR_NAME, f"relay-sim injected error after seq {seq}"))
        self._count(step, seq)
        return frames

    def _count(self, step: Step, seq: int) -> None:
        for kind in (*step.before, *step.after, *((step.replace,) if step.replace else ())):
            self.injected[kind] += 1
        if step.connection is not None:
            self.injected[step.connection] += 1
            self._fired.add(seq)
            if len(self._fired) > _FIRED_MEMORY:
                self._fired.discard(min(self._fired))

    def _render_before(self, kind: str, seq: int, main: bytes) -> bytes:
        if kind == "garbage":
            return garbage_frame(self._rng("garbage", seq))
        if kind == "truncated":
            return main[: len(main) // 2]
        return info_frame(INFO_NAME, f"relay-sim injected #info before seq {seq}")

    def _render_replacement(self, kind: str, seq: int) -> bytes:
        rng = self._rng(kind, seq)
        did = self._did(rng)
        time_us = BASE_TIME_US + (seq - self.first_seq) * FRAME_INTERVAL_US
        if kind == "too_big":
            return too_big_frame(rng, seq, did, time_us)
        return sync_frame(rng, seq, did, time_us)

    def _did(self, rng: random.Random) -> str:
        did_of = getattr(self.source, "did", None)
        if did_of is not None:
            return did_of(rng.randrange(self.source.dids))
        return "did:plc:relaysimfault" + "".join(rng.choice("234567abcdefghijklmnopqrstuvwxyz") for _ in range(3))

    def _rng(self, kind: str, seq: int) -> random.Random:
        return random.Random(xxhash.xxh64_intdigest(b"%s:%d" % (kind.encode(), seq), self.faults.seed))


def error_frame(error: str, message: str) -> bytes:
    """An error frame: header {op: -1}, body {error, message}."""
    return _ERROR_HEADER + encode({"error": error, "message": message})


def info_frame(name: str, message: str) -> bytes:
    return _INFO_HEADER + encode({"name": name, "message": message})


def garbage_frame(rng: random.Random) -> bytes:
    # 0xFF (a CBOR "break" outside any indefinite item) is never a valid first byte, so
    # the garbage can never decode by chance.
    return b"\xff" + rng.randbytes(rng.randint(0, 200))


def too_big_frame(rng: random.Random, seq: int, did: str, time_us: int) -> bytes:
    """A #commit marked tooBig: no ops and no blocks, as relays send them."""
    rev = tid(time_us, 0)
    body = {"ops": [], "rev": rev, "seq": seq, "repo": did, "time": rfc3339_ms(time_us), "blobs": [],
            "since": tid(time_us - 10**6, 0), "blocks": b"", "commit": Link(cid_for_block(rng.randbytes(32))),
            "rebase": False, "tooBig": True, "prevData": None}
    return _COMMIT_HEADER + encode(body)


def sync_frame(rng: random.Random, seq: int, did: str, time_us: int) -> bytes:
    """A #sync: {did, rev, seq, time, blocks = CAR holding just the signed commit}."""
    rev = tid(time_us, 0)
    commit_block = encode({"did": did, "version": 3, "data": Link(cid_for_block(rng.randbytes(32))), "rev": rev,
                           "prev": None, "sig": rng.randbytes(64)})
    commit_cid = cid_for_block(commit_block)
    body = {"did": did, "rev": rev, "seq": seq, "time": rfc3339_ms(time_us),
            "blocks": encode_car(commit_cid, [(commit_cid, commit_block)])}
    return _SYNC_HEADER + encode(body)

