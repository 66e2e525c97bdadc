from jetstream.framefile import read_frames, write_frames


def test_corpus_file_holds_150_frames(corpus_frames):
    assert len(corpus_frames) == 150
    assert all(len(frame) > 10 for frame in corpus_frames)


def test_write_then_read_round_trips(tmp_path):
    frames = [b"a", b"", b"\x00" * 70000]
    write_frames(tmp_path / "f.zst", frames)
    assert read_frames(tmp_path / "f.zst") == frames


def test_truncated_file_is_an_error(tmp_path):
    import pytest
    import zstandard

    (tmp_path / "bad.zst").write_bytes(zstandard.ZstdCompressor().compress(b"\x10\x00\x00\x00abc"))
    with pytest.raises(ValueError, match="truncated frame"):
        read_frames(tmp_path / "bad.zst")
