"""The query and options_update parameters v1 did not have: heartbeatSeconds, includeSync."""
from __future__ import annotations

import pytest

from jetstream.server import params


def parse(query: str) -> params.SubscriberOptions:
    return params.parse_subscribe_query(query.encode(), "", 1_800_000_000_000_000)


def test_v1_queries_get_no_heartbeat_and_no_sync():
    options = parse("wantedCollections=app.bsky.feed.post&cursor=5")
    assert (options.heartbeat_seconds, options.include_sync) == (0, False)
    assert parse("heartbeatSeconds=").heartbeat_seconds == 0  # empty: absent, like v1's cursor=


@pytest.mark.parametrize("text,value", [("1", 1), ("3600", 3600), ("%2B30", 30), ("007", 7)])
def test_heartbeat_seconds_takes_integers_1_to_3600(text, value):
    assert parse(f"heartbeatSeconds={text}").heartbeat_seconds == value


@pytest.mark.parametrize("text", ["0", "3601", "-5", "1.0", "1e3", "ten", "99999999999999999999999"])
def test_other_heartbeat_seconds_are_a_400_naming_the_value(text):
    with pytest.raises(params.BadRequest) as raised:
        parse(f"heartbeatSeconds={text}")
    assert raised.value.text == f"invalid heartbeatSeconds: {text}"


def test_v1_errors_come_first():
    with pytest.raises(params.BadRequest) as raised:
        parse("cursor=x&heartbeatSeconds=0")
    assert raised.value.text == "invalid cursor: x"


def test_include_sync_only_for_exactly_true():
    assert parse("includeSync=true").include_sync is True
    assert parse("includeSync=1").include_sync is False and parse("includeSync=True").include_sync is False


@pytest.mark.parametrize("payload,expected", [
    (b'{"wantedCollections":[]}', None),
    (b'{"heartbeatSeconds":null}', None),
    (b'{"heartbeatSeconds":0}', 0),
    (b'{"heartbeatSeconds":15}', 15),
    (b'{"HEARTBEATSECONDS":15}', 15),  # Go's case-insensitive field match, like v1's fields
])
def test_options_update_heartbeat_seconds(payload, expected):
    update = params.interpret_client_message(b'{"type":"options_update","payload":%s}' % payload)
    assert isinstance(update, params.OptionsUpdate) and update.heartbeat_seconds == expected


@pytest.mark.parametrize("payload,reason", [
    (b'{"heartbeatSeconds":3601}', "failed to parse subscriber options: invalid heartbeatSeconds: 3601"),
    (b'{"heartbeatSeconds":-1}', "failed to parse subscriber options: invalid heartbeatSeconds: -1"),
    (b'{"heartbeatSeconds":"5"}', "failed to unmarshal subscriber options update: json: cannot unmarshal string "
                                  "into Go struct field SubscriberOptionsUpdatePayload.heartbeatSeconds of type int"),
])
def test_options_update_with_a_bad_heartbeat_closes_with_a_reason(payload, reason):
    outcome = params.interpret_client_message(b'{"type":"options_update","payload":%s}' % payload)
    assert outcome == params.CloseConnection(params.truncate_close_reason(reason))  # 123 bytes at most
