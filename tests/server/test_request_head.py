"""The front door's decisions, without sockets: request_head.HeadReader fed bytes.

The same reader runs behind the real listener (test_server_http.py and the hostile tests
drive it over loopback); here each rule is pinned by feeding bytes and reading the decision.
"""
from __future__ import annotations

from jetstream.server.request_head import (
    BUSY_RESPONSE,
    NEED_MORE,
    PICOWS_MAX_HEAD_BYTES,
    TOO_LARGE_RESPONSE,
    Answer,
    HandOver,
    HeadBudget,
    HeadReader,
)

GET = b"GET /subscribe?wantedCollections=app.bsky.feed.post HTTP/1.1\r\nHost: x\r\n\r\n"


def reader(max_request_bytes: int = 1 << 20, budget: HeadBudget | None = None) -> HeadReader:
    return HeadReader(max_request_bytes, budget if budget is not None else HeadBudget(64 << 20))


def test_a_get_is_handed_over_unchanged_once_its_head_is_complete():
    head = reader()
    for i in range(len(GET) - 1):  # one byte at a time: the end marker may straddle chunks
        assert head.feed(GET[i:i + 1]) is NEED_MORE
    decision = head.feed(GET[-1:])
    assert decision == HandOver(GET, None)


def test_bytes_after_the_head_go_to_picows_with_it():
    assert reader().feed(GET + b"\x81\x80early") == HandOver(GET + b"\x81\x80early", None)


def test_other_methods_get_echos_answers():
    post = reader().feed(b"POST /subscribe HTTP/1.1\r\nHost: x\r\n\r\n")
    assert isinstance(post, Answer) and post.reason == "method_not_get"
    assert post.response.startswith(b"HTTP/1.1 405 ") and b"Allow: OPTIONS, GET" in post.response
    head = reader().feed(b"HEAD / HTTP/1.1\r\n\r\n")
    assert head.response.startswith(b"HTTP/1.1 405 ") and head.response.endswith(b"\r\n\r\n")
    missing = reader().feed(b"PUT /nowhere HTTP/1.1\r\n\r\n")
    assert missing.response.startswith(b"HTTP/1.1 404 ")
    preflight = reader().feed(b"OPTIONS /subscribe HTTP/1.1\r\nOrigin: https://a.example\r\n"
                              b"Access-Control-Request-Method: GET\r\n\r\n")
    assert preflight.response.startswith(b"HTTP/1.1 204 ")


def test_a_head_over_max_request_bytes_gets_431_before_it_ends():
    head = reader(max_request_bytes=100)
    assert head.feed(b"GET /?" + b"a" * 50) is NEED_MORE
    assert head.feed(b"a" * 60) == Answer(TOO_LARGE_RESPONSE, "request_too_large")
    complete = reader(max_request_bytes=100).feed(b"GET /?" + b"a" * 100 + b" HTTP/1.1\r\n\r\n")
    assert complete == Answer(TOO_LARGE_RESPONSE, "request_too_large")


def test_a_long_query_is_moved_aside_for_picows_and_the_full_target_kept():
    target = b"/subscribe?" + b"wantedDids=did:plc:aaaaaaaaaaaaaaaaaaaaaaaa&" * 600
    request = b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    assert len(request) > PICOWS_MAX_HEAD_BYTES
    decision = reader().feed(request)
    assert decision == HandOver(b"GET /subscribe HTTP/1.1\r\nHost: x\r\n\r\n", target)


def test_long_headers_or_an_unsplittable_long_line_get_431():
    cookie = reader().feed(b"GET / HTTP/1.1\r\nCookie: " + b"c" * 20_000 + b"\r\n\r\n")
    assert cookie == Answer(TOO_LARGE_RESPONSE, "request_too_large")
    malformed = reader().feed(b"GET /?" + b"a" * 20_000 + b" HTTP/1.1 extra\r\n\r\n")
    assert malformed == Answer(TOO_LARGE_RESPONSE, "request_too_large")


def test_a_short_malformed_head_goes_to_picows_which_answers_it_itself():
    assert reader().feed(b"garbage\r\n\r\n") == HandOver(b"garbage\r\n\r\n", None)


def test_unfinished_heads_share_one_budget_and_give_it_back():
    budget = HeadBudget(100)
    first, second = reader(budget=budget), reader(budget=budget)
    assert first.feed(b"GET /" + b"a" * 55) is NEED_MORE
    assert budget.held == 60 and first.held == 60
    assert second.feed(b"GET /" + b"b" * 45) == Answer(BUSY_RESPONSE, "server_busy")
    assert budget.held == 60  # the refused connection holds nothing
    assert first.feed(b" HTTP/1.1\r\n\r\n").__class__ is HandOver
    assert budget.held == 0  # a decided head is released
    third = reader(budget=budget)
    third.feed(b"GET /" + b"c" * 10)
    third.release()  # connection closed or timed out before the head ended
    assert budget.held == 0 and third.held == 0


# --- local routes: the archive's XRPC endpoints, answered by the server itself (issue 24) ---

from jetstream.server.request_head import Local, LocalRoutes  # noqa: E402

ROUTES = LocalRoutes(frozenset({b"/xrpc/network.bsky.jetstream.planSnapshot",
                                b"/xrpc/network.bsky.jetstream.getSegment"}), max_body_bytes=100)


def local_reader(budget: HeadBudget | None = None) -> HeadReader:
    return HeadReader(1 << 20, budget if budget is not None else HeadBudget(64 << 20), ROUTES)


def test_a_local_get_is_read_whole_not_handed_to_picows():
    decision = local_reader().feed(b"GET /xrpc/network.bsky.jetstream.getSegment?name=x HTTP/1.1\r\n"
                                   b"Range: bytes=0-9\r\n\r\n")
    assert decision == Local("GET", b"/xrpc/network.bsky.jetstream.getSegment?name=x", {"Range": "bytes=0-9"}, b"")


def test_a_local_post_waits_for_its_body_held_against_the_budget():
    budget = HeadBudget(1 << 20)
    head = local_reader(budget)
    request = b"POST /xrpc/network.bsky.jetstream.planSnapshot HTTP/1.1\r\nContent-Length: 11\r\n\r\n"
    assert head.feed(request + b'{"dids"') is NEED_MORE
    assert budget.held == len(request) + 7
    decision = head.feed(b':[]}extra')
    assert isinstance(decision, Local) and decision.body == b'{"dids":[]}' and decision.body_error is None
    assert budget.held == 0


def test_a_local_body_over_the_limit_or_without_a_length_is_refused_unread():
    too_big = local_reader().feed(b"POST /xrpc/network.bsky.jetstream.planSnapshot HTTP/1.1\r\n"
                                  b"Content-Length: 101\r\n\r\n")
    assert isinstance(too_big, Local) and too_big.body_error == "too_large" and too_big.body == b""
    chunked = local_reader().feed(b"POST /xrpc/network.bsky.jetstream.planSnapshot HTTP/1.1\r\n"
                                  b"Transfer-Encoding: chunked\r\n\r\n")
    assert chunked.body_error == "length_required"


def test_other_paths_and_preflights_are_unchanged_with_local_routes():
    assert local_reader().feed(GET) == HandOver(GET, None)
    preflight = local_reader().feed(b"OPTIONS /xrpc/network.bsky.jetstream.planSnapshot HTTP/1.1\r\n"
                                    b"Origin: https://a.example\r\n\r\n")
    assert isinstance(preflight, Answer) and preflight.response.startswith(b"HTTP/1.1 204 ")
