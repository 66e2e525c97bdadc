"""What a synthetic relay's frames must come out as: shared by the crash and fault tests."""
from __future__ import annotations

from jetstream.events import render_json
from jetstream.ingest.decode import decode_frame
from jetstream.relaysim.synthetic import SyntheticSource


def expected_lines(seed: int, dids: int, up_to_seq: int) -> list[bytes]:
    """Every event relay-sim's frames 1..up_to_seq yield, time_us zeroed, in relay order."""
    source = SyntheticSource(seed=seed, dids=dids)
    lines = []
    for seq in range(source.first_seq, up_to_seq + 1):
        lines += [render_json(pending, 0) for pending in decode_frame(source.frame(seq)).events]
    return lines
