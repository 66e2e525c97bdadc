"""CollectionStats: windows, expiry and the collection cap, on a clock the test drives."""
from __future__ import annotations

from jetstream.ingest.collection_filter import IngestCollections, parse_ingest_collections
from jetstream.ingest.collection_stats import OTHER_COLLECTIONS, CollectionStats


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


POST, LIKE = "app.bsky.feed.post", "app.bsky.feed.like"


def counts(report, collection, window):
    return report["collections"][collection][window]


def test_windows_slide_and_the_retention_window_forgets_whole_hours():
    clock = Clock(1_000_000.0)
    stats = CollectionStats(retention_s=2 * 3600, clock_s=clock)
    stats.record({(POST, "create"): 3, ("", "identity"): 1})
    clock.now += 30
    stats.record({(POST, "delete"): 1, (LIKE, "create"): 2})
    report = stats.report()
    assert counts(report, POST, "minute") == {"create": 3, "update": 0, "delete": 1}
    assert report["totals"]["minute"] == {"create": 5, "update": 0, "delete": 1, "identity": 1, "account": 0,
                                          "sync": 0, "all": 7}
    clock.now += 40  # the first batch is now 70 s old (out of the minute), the second 40 s
    report = stats.report()
    assert counts(report, POST, "minute") == {"create": 0, "update": 0, "delete": 1}
    assert counts(report, POST, "hour") == {"create": 3, "update": 0, "delete": 1}
    clock.now += 3600  # out of the hour, inside the 2 h retention
    report = stats.report()
    assert POST in report["collections"] and counts(report, POST, "hour") == {"create": 0, "update": 0, "delete": 0}
    assert counts(report, POST, "retention") == {"create": 3, "update": 0, "delete": 1}
    clock.now += 2 * 3600 + 3600  # the hour bucket holding both batches is past the retention
    report = stats.report()
    assert report["collections"] == {} and report["totals"]["retention"]["all"] == 0
    assert report["total_events"] == 7  # since start: never expires (rates on /status)


def test_collections_beyond_the_cap_are_summed_under_other():
    stats = CollectionStats(retention_s=3600, max_collections=2, clock_s=Clock(5_000.0))
    stats.record({("a.b.c", "create"): 1, ("a.b.d", "create"): 1})
    stats.record({("a.b.e", "create"): 4, ("a.b.c", "update"): 1})
    report = stats.report()
    assert set(report["collections"]) == {"a.b.c", "a.b.d", OTHER_COLLECTIONS}
    assert counts(report, OTHER_COLLECTIONS, "retention")["create"] == 4
    assert counts(report, "a.b.c", "retention") == {"create": 1, "update": 1, "delete": 0}


def test_ingest_collections_keeps_exact_names_prefixes_and_every_non_commit_event():
    keep = IngestCollections(parse_ingest_collections(" app.bsky.feed.post , app.bsky.graph.* "))
    assert keep.keeps("app.bsky.feed.post") and keep.keeps("app.bsky.graph.follow") and keep.keeps("")
    assert not keep.keeps("app.bsky.feed.like") and not keep.keeps("app.bsky.graphs.x")
    assert parse_ingest_collections("") == ()


def test_running_hour_and_retention_sums_equal_a_recount_of_what_was_recorded():
    import random

    rng = random.Random(7)
    clock = Clock(2_000_000.0)
    stats = CollectionStats(retention_s=3 * 3600, clock_s=clock)
    recorded = []  # (time, collection, op, amount)
    for _ in range(3000):
        clock.now += rng.uniform(0, 12)
        collection, op = rng.choice([POST, LIKE, "app.x.y"]), rng.choice(["create", "update", "delete"])
        amount = rng.randint(1, 5)
        stats.record({(collection, op): amount})
        recorded.append((clock.now, collection, op, amount))
    report = stats.report()
    now = clock.now
    fine_floor = int(now // 10) * 10 - 359 * 10  # the oldest 10 s bucket still in the hour
    coarse_floor = now - 3 * 3600  # hour buckets wholly older than the retention are gone
    for collection in (POST, LIKE, "app.x.y"):
        for op in ("create", "update", "delete"):
            hour = sum(a for t, c, o, a in recorded if (c, o) == (collection, op) and int(t // 10) * 10 >= fine_floor)
            kept = sum(a for t, c, o, a in recorded
                       if (c, o) == (collection, op) and int(t // 3600) * 3600 + 3600 > coarse_floor)
            assert counts(report, collection, "hour")[op] == hour
            assert counts(report, collection, "retention")[op] == kept


def test_a_rate_divides_by_the_time_each_window_really_covers():
    """26 s after start at 300 events/s the minute holds 7,800 events over 26 s: 300/s, not 130/s."""
    clock = Clock(1_000_003.0)  # not on a bucket boundary
    stats = CollectionStats(retention_s=24 * 3600, clock_s=clock)
    for _ in range(26):
        clock.now += 1
        stats.record({(POST, "create"): 300})
    report = stats.report()
    assert report["covered_seconds"] == {"minute": 26.0, "hour": 26.0, "retention": 26.0}
    assert report["totals"]["minute"]["all"] / report["covered_seconds"]["minute"] == 300
    clock.now += 600  # long after start: the minute spans 5 whole buckets and the current, partial one
    report = stats.report()
    covered = report["covered_seconds"]
    assert covered["minute"] == clock.now - (int(clock.now // 10) * 10 - 50) == 59.0 and covered["hour"] == 626.0
