"""ServerSettings: the server's whole configuration, built from `jetstream serve` flags, frozen."""
from __future__ import annotations

import dataclasses
import inspect

import pytest

from jetstream.config import parse_serve_args
from jetstream.dictionary import active_dictionary, dictionary_id
from jetstream.server.app import SubscribeServer
from jetstream.server.settings import ServerSettings


def test_defaults_are_the_serve_flags_defaults():
    assert ServerSettings.from_config(parse_serve_args([])) == ServerSettings()


def test_every_flag_reaches_its_setting():
    cfg = parse_serve_args([
        "--max-sub-rate", "12.5", "--per-ip-limit", "false", "--max-conns-per-ip", "3",
        "--trust-proxy-headers", "true", "--max-client-message-bytes", "999", "--ping-interval", "7s",
        "--pong-timeout", "9s", "--hello-timeout", "2s", "--handshake-timeout", "1s",
        "--max-request-bytes", "5000", "--max-pending-request-bytes", "70000", "--max-ip-metric-labels", "4",
        "--max-lag-events", "100", "--max-lag-seconds", "3s", "--max-lag-grace", "11s",
    ])
    dictionary = active_dictionary()
    settings = ServerSettings.from_config(cfg, zstd_dictionary=dictionary)
    assert settings == ServerSettings(
        max_sub_rate=12.5, per_ip_limit=False, max_conns_per_ip=3, trust_proxy_headers=True,
        max_client_message_bytes=999, ping_interval_s=7.0, pong_timeout_s=9.0, hello_timeout_s=2.0,
        handshake_timeout_s=1.0, max_request_bytes=5000, max_pending_request_bytes=70000, max_ip_metric_labels=4,
        max_lag_events=100, max_lag_seconds=3.0, max_lag_grace_s=11.0, zstd_dictionary=dictionary)
    assert settings.lag_limits == (100, 3.0, 11.0)
    assert settings.zstd_dictionary_id == dictionary_id(dictionary) != 0
    assert settings.effective_pong_timeout_s == 7.0  # picows: the pong wait fits in the ping interval


def test_settings_cannot_be_changed_after_the_fact():
    settings = ServerSettings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.max_request_bytes = 1  # type: ignore[misc]


def test_the_server_takes_its_collaborators_and_one_settings_object():
    parameters = inspect.signature(SubscribeServer.__init__).parameters
    assert list(parameters) == ["self", "event_log", "ring", "settings", "health", "clock_us"]
