"""The Cython commit-op loop (jetstream._core.commit) and its reference twin
(jetstream._py.commit) agree: the same events (every byte) and drops for real and
edited commits, the same FrameError for ill-typed ops, and the same verdicts of the
RFC 3339 and MST path checks."""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jetstream._core import commit as fast
from jetstream._py import commit as ref
from jetstream.ingest.car import read_car
from jetstream.ingest.frames import FrameError, split_frame
from jetstream.relaysim.synthetic import SyntheticSource

pytestmark = pytest.mark.timeout(120)
FUZZ = settings(max_examples=800, deadline=None, suppress_health_check=list(HealthCheck), database=None)


def _run(module, repo, rev, ops, blocks):
    events, drops = [], []
    try:
        module.commit_events(repo, rev, ops, blocks, events, drops)
    except FrameError as err:
        return ("frame_error", err.reason, err.detail)
    return (events, drops)


@pytest.fixture(scope="module")
def commits(corpus_frames):
    source = SyntheticSource(seed=5, dids=20)
    out = []
    for frame in list(corpus_frames) + [source.frame(seq) for seq in range(1, 120)]:
        header, body = split_frame(frame)
        if header.get("t") == "#commit" and type(body.get("blocks")) is bytes:
            out.append((body["repo"], body["rev"], body["ops"], read_car(body["blocks"]).blocks))
    return out


def test_real_commits_give_the_same_events_and_drops(commits):
    total = 0
    for repo, rev, ops, blocks in commits:
        result = _run(fast, repo, rev, ops, blocks)
        assert result == _run(ref, repo, rev, ops, blocks)
        total += len(result[0])
    assert total > 200


def test_edited_ops_give_the_same_events_drops_and_errors(commits):
    texts = st.one_of(st.sampled_from(["create", "update", "delete", "Create", "", "app.bsky.feed.post/3k",
                                       "a/b/c", "/x", "x/", "no-slash", "é/x", "a" * 300 + "/x",
                                       "app.bsky.feed.like/~tilde:ok_-."]), st.text(max_size=20))
    values = st.one_of(texts, st.none(), st.integers(), st.binary(max_size=40))

    @FUZZ
    @given(st.sampled_from(commits), st.data())
    def check(commit, data):
        repo, rev, ops, blocks = commit
        ops = [dict(op) if isinstance(op, dict) else op for op in ops]
        for _ in range(data.draw(st.integers(0, 3))):
            if not ops:
                break
            index = data.draw(st.integers(0, len(ops) - 1))
            field = data.draw(st.sampled_from(["action", "path", "cid", "whole"]))
            if field == "whole":
                ops[index] = data.draw(st.one_of(values, st.just([])))
            elif isinstance(ops[index], dict):
                ops[index][field] = data.draw(values)
        rev = data.draw(st.one_of(st.just(rev), st.just(""), st.text(max_size=8)))
        assert _run(fast, repo, rev, ops, blocks) == _run(ref, repo, rev, ops, blocks)

    check()


RFC3339_SAMPLES = ["2024-01-01T00:00:00Z", "2024-02-29T23:59:59.999999Z", "2023-02-29T00:00:00Z",
                   "2024-12-31T23:59:59+24:00", "2024-12-31T23:59:59-25:00", "2024-12-31T23:59:59+01:61",
                   "2024-12-31T23:59:59,5+01:00", "2024-12-31T23:59:59.Z", "2024-13-01T00:00:00Z",
                   "2024-00-10T00:00:00Z", "2024-04-31T00:00:00Z", "2024-01-01T24:00:00Z",
                   "2024-01-01T00:60:00Z", "2024-01-01T00:00:60Z", "2024-01-01 00:00:00Z",
                   "2024-01-01T00:00:00", "2024-01-01T00:00:00Zx", "１２３４-01-01T00:00:00Z", "1900-02-29T00:00:00Z",
                   "2000-02-29T00:00:00Z", "2024-01-01T00:00:00+0100", ""]


def test_rfc3339_checks_agree():
    for sample in RFC3339_SAMPLES:
        assert fast.is_rfc3339(sample) == ref.is_rfc3339(sample), sample
    assert sum(map(ref.is_rfc3339, RFC3339_SAMPLES)) >= 5

    digits = st.text(alphabet="0123456789", min_size=1, max_size=3)
    candidate = st.builds(
        lambda y, mo, d, sep, h, mi, s, frac, zone: f"{y}-{mo}-{d}{sep}{h}:{mi}:{s}{frac}{zone}",
        st.text(alphabet="0123456789", min_size=3, max_size=5), digits, digits, st.sampled_from("Tt "),
        digits, digits, digits, st.one_of(st.just(""), st.builds(lambda c, f: c + f, st.sampled_from(".,"),
                                                                   st.text(alphabet="0123456789", max_size=4))),
        st.one_of(st.sampled_from(["Z", "z", ""]), st.builds(lambda sign, h, m: f"{sign}{h}:{m}",
                                                             st.sampled_from("+-"), digits, digits)))

    @FUZZ
    @given(st.one_of(candidate, st.text(max_size=30)))
    def check(value):
        assert fast.is_rfc3339(value) == ref.is_rfc3339(value)

    check()


def test_mst_path_checks_agree():
    @FUZZ
    @given(st.one_of(st.text(alphabet="ab:._~-/Z9 é!", max_size=12), st.text(max_size=270),
                     st.integers(250, 260).map(lambda n: "c/" + "r" * (n - 2))))
    def check(path):
        assert fast.is_mst_key(path) == ref.is_mst_key(path)

    check()
    assert fast.is_mst_key("app.bsky.feed.post/3kabc") and not fast.is_mst_key("a/b/c")
