import json
import subprocess
import sys

from jetstream.logfmt import JsonLineFormatter, parse_pairs


def test_key_value_message_becomes_fields():
    assert parse_pairs('event=relay_reconnect attempt=3 delay_s=1.6 url="ws://a b"') == {
        "event": "relay_reconnect", "attempt": "3", "delay_s": "1.6", "url": "ws://a b"}


def test_prose_is_kept_whole_in_msg():
    assert parse_pairs("plain words here") == {"msg": "plain words here"}


def test_json_formatter_emits_one_object_with_level_and_fields():
    import logging

    record = logging.LogRecord("jetstream.x", logging.WARNING, __file__, 1, "event=frame_skipped reason=%s", ("bad_car",), None)
    line = JsonLineFormatter().format(record)
    obj = json.loads(line)
    assert obj["level"] == "warning" and obj["logger"] == "jetstream.x"
    assert obj["event"] == "frame_skipped" and obj["reason"] == "bad_car"


def test_serve_with_log_format_json_writes_json_lines(tmp_path):
    # A daemon that cannot open its data dir logs and exits: every stderr line must be JSON.
    (tmp_path / "data").write_text("not a log")
    proc = subprocess.run(
        [sys.executable, "-m", "jetstream.cli", "serve", "--log-format", "json", "--data-dir", str(tmp_path / "data"),
         "--listen-addr", "127.0.0.1:0", "--metrics-listen-addr", "", "--ws-url", "ws://127.0.0.1:9/x"],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode != 0
    lines = [l for l in proc.stderr.splitlines() if l.startswith("{")]
    assert lines, proc.stderr
    assert all(isinstance(json.loads(l), dict) for l in lines)


def _record(msg, *args):
    import logging

    return logging.LogRecord("jetstream.x", logging.INFO, __file__, 1, msg, args, None)


def test_text_lines_quote_values_with_spaces_and_have_no_space_in_ts():
    from jetstream.logfmt import TextLineFormatter

    line = TextLineFormatter().format(_record("event=e error=%r name=%s n=%d ok=%s", "disk full", "a b", 3, "plain"))
    fields = parse_pairs(line)
    assert fields["error"] == "disk full" and fields["name"] == "a b" and fields["n"] == "3" and fields["ok"] == "plain"
    assert line.split(" ")[0].startswith("ts=") and line.split(" ")[0].endswith("Z")
    assert fields["level"] == "INFO" and fields["event"] == "e"


def test_json_lines_keep_numbers_booleans_and_null_typed():
    obj = json.loads(JsonLineFormatter().format(
        _record("event=e n=%d rate=%.1f fresh=%s cursor=%s name=%s quoted=%r", 7, 2.5, False, None, "x y", "12")))
    assert obj["n"] == 7 and obj["rate"] == 2.5 and obj["fresh"] is False and obj["cursor"] is None
    assert obj["name"] == "x y"
    assert obj["quoted"] == "12"  # quoted in the message: stays text


def test_picows_info_lines_only_at_debug():
    import logging

    from jetstream.logfmt import setup_logging

    setup_logging("info")
    assert not logging.getLogger("picows.server.subscribe").isEnabledFor(logging.INFO)
    setup_logging("debug")
    assert logging.getLogger("picows.server.subscribe").isEnabledFor(logging.INFO)
    setup_logging("warning")
