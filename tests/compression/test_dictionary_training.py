"""The project's zstd dictionary: reproducible from synthetic frames, not v1's, better than none on real events."""
from __future__ import annotations

import json

import pytest

from jetstream import dictionary
from jetstream.cli import main
from jetstream.compression import EventCompressor, decompress
from jetstream.events import Event, render_json
from jetstream.ingest.decode import decode_frame
from jetstream.log.store import EventLog
from jetstream.relaysim.synthetic import SyntheticSource

# Training the shipped dictionary again takes ~15 s on a quiet 2-core machine and several times
# that on a loaded one: the timeout is for a hang, not for speed.
pytestmark = pytest.mark.timeout(240)

LEGACY_DICTIONARY_ID = 1612007021


def corpus_events(corpus_dir) -> list[bytes]:
    return [line for name in ("expected_v1.jsonl", "golden_v1.jsonl")
            for line in (corpus_dir / name).read_bytes().splitlines() if line]


def test_shipped_dictionary_is_reproducible_from_synthetic_frames():
    shipped = dictionary.SHIPPED_DICTIONARY_PATH.read_bytes()
    retrained = dictionary.train(dictionary.synthetic_samples(dictionary.DEFAULT_SYNTHETIC_SAMPLES),
                                 dict_id=dictionary.SHIPPED_DICTIONARY_ID)
    assert retrained == shipped
    assert dictionary.dictionary_id(shipped) == dictionary.SHIPPED_DICTIONARY_ID
    assert len(shipped) == dictionary.DEFAULT_DICTIONARY_SIZE


def test_shipped_dictionary_is_not_v1s_and_holds_nothing_from_the_corpus(corpus_dir):
    shipped = dictionary.SHIPPED_DICTIONARY_PATH.read_bytes()
    assert shipped != (corpus_dir / "legacy_subscribe.zdict").read_bytes()
    assert dictionary.dictionary_id(shipped) != LEGACY_DICTIONARY_ID
    corpus_dids = {json.loads(line)["did"] for line in corpus_events(corpus_dir)}
    assert len(corpus_dids) > 50
    assert not [did for did in corpus_dids if did.encode() in shipped]


def test_compression_ratio_on_corpus_events_ours_vs_v1s_vs_none(corpus_dir):
    events = corpus_events(corpus_dir)
    raw = sum(map(len, events))
    sizes = {
        "none": dictionary.compressed_size(events),
        "v1 legacy": dictionary.compressed_size(events, (corpus_dir / "legacy_subscribe.zdict").read_bytes()),
        "jetstream-py": dictionary.compressed_size(events, dictionary.SHIPPED_DICTIONARY_PATH.read_bytes()),
    }
    print(f"\n{len(events)} corpus events, {raw} JSON bytes")
    for name, size in sizes.items():
        print(f"  {name:13s} {size:7d} bytes  raw/compressed {raw / size:.2f}")
    assert sizes["jetstream-py"] < 0.8 * sizes["none"]
    assert sizes["jetstream-py"] < 1.1 * sizes["v1 legacy"]


def synthetic_log(path, count: int) -> None:
    compressor = EventCompressor()
    source = SyntheticSource(seed=7, dids=300)
    events: list[Event] = []
    seq, time_us = 1, 1_750_000_000_000_000
    while len(events) < count:
        for pending in decode_frame(source.frame(seq)).events:
            time_us += 5
            body = render_json(pending, time_us)
            events.append(Event(time_us, pending.did, pending.kind, pending.collection, body, compressor.compress(body)))
        seq += 1
    with EventLog(str(path)) as event_log:
        event_log.append(events, relay_cursor=seq)


def test_train_dictionary_command_trains_from_a_log(tmp_path, capsys):
    synthetic_log(tmp_path / "data", 3000)
    out = tmp_path / "trained.zdict"
    main(["train-dictionary", "--data-dir", str(tmp_path / "data"), "--out", str(out), "--size", "16384"])
    trained = out.read_bytes()
    assert 0 < len(trained) <= 16384 and dictionary.dictionary_id(trained) >= 32768
    assert "train-dictionary:" in capsys.readouterr().out
    samples = dictionary.log_samples(str(tmp_path / "data"), 500)
    assert len(samples) == 500
    compressor = EventCompressor(trained)
    assert [decompress(compressor.compress(s), trained) for s in samples[:50]] == samples[:50]
    assert dictionary.compressed_size(samples, trained) < dictionary.compressed_size(samples)
    # The daemon takes it as an operator's dictionary.
    assert dictionary.active_dictionary(str(out)) == trained


def test_train_dictionary_needs_exactly_one_source(tmp_path):
    with pytest.raises(SystemExit):
        main(["train-dictionary", "--out", str(tmp_path / "x.zdict")])
    with pytest.raises(SystemExit):
        main(["train-dictionary", "--out", str(tmp_path / "x.zdict"), "--synthetic", "10", "--data-dir", "d"])


def test_a_raw_content_file_is_refused_as_a_dictionary(tmp_path):
    raw = tmp_path / "raw.bin"
    raw.write_bytes(b'{"did":"did:plc:x"}' * 100)
    with pytest.raises(ValueError, match="not a formatted zstd dictionary"):
        dictionary.active_dictionary(str(raw))
