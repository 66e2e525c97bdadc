"""The public server's configuration as one frozen value.

Owns: every setting SubscribeServer and its subscribers read (rate limits, connection caps,
timeouts, request and message size limits, the metric label budget, the slow-client
policy, the zstd dictionaries served at /zstd-dictionary and getZstdDictionary, and the live
fast path), their defaults (v1's where v1
had the setting) and how they are read from a `jetstream serve` Config.
It must never be changed after the server is built: a test or the daemon wanting other
limits builds another ServerSettings (dataclasses.replace) and another server.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from jetstream.dictionary import active_v2_dictionary, dictionary_id
from jetstream.server.live import fastpath_from_env

PING_INTERVAL_S = 30.0  # v1 (since f4da85b) pings every 30 s
PONG_TIMEOUT_S = 30.0
HELLO_TIMEOUT_S = 60.0
HANDSHAKE_TIMEOUT_S = 5.0
# v1 read inbound messages of any size and ignored those over 10,000,000 bytes; we refuse
# them at that size without reading them: picows closes with 1009 as soon as the frame
# header announces more.
MAX_CLIENT_MESSAGE_BYTES = 10_000_000
MAX_REQUEST_BYTES = 1 << 20  # Go net/http DefaultMaxHeaderBytes, which v1 (echo) ran with
MAX_PENDING_REQUEST_BYTES = 64 << 20
MAX_IP_METRIC_LABELS = 10_000
ARCHIVE_SEND_THREADS = 8
ARCHIVE_SEND_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class ServerSettings:
    """What SubscribeServer is configured with; the defaults are `jetstream serve`'s."""

    max_sub_rate: float = 5000.0  # events/s per token bucket
    per_ip_limit: bool = True  # one bucket per client IP (v1) rather than per connection
    max_conns_per_ip: int = 0  # 0 = no cap
    trust_proxy_headers: bool = False
    max_client_message_bytes: int = MAX_CLIENT_MESSAGE_BYTES
    ping_interval_s: float = PING_INTERVAL_S  # 0 = no pings
    pong_timeout_s: float = PONG_TIMEOUT_S
    hello_timeout_s: float = HELLO_TIMEOUT_S  # 0 = wait forever for a requireHello client
    handshake_timeout_s: float = HANDSHAKE_TIMEOUT_S
    max_request_bytes: int = MAX_REQUEST_BYTES
    max_pending_request_bytes: int = MAX_PENDING_REQUEST_BYTES
    max_ip_metric_labels: int = MAX_IP_METRIC_LABELS  # 0 = no limit
    max_lag_events: int = 0  # slow-client policy; 0 = off
    max_lag_seconds: float = 0.0  # 0 = off
    max_lag_grace_s: float = 30.0
    zstd_dictionary: bytes = b""  # served at /zstd-dictionary; b"" = 404
    # The v2 wire's (subscribeEvents zstdDictionary=<id>), served at getZstdDictionary: ours, shipped.
    v2_zstd_dictionary: bytes = field(default_factory=active_v2_dictionary)
    # Live fast path (server/live.py). The default reads JETSTREAM_LIVE_FASTPATH (on unless it
    # says otherwise), as the flag does, so servers built directly (tests, benches) follow it too.
    live_fastpath: bool = field(default_factory=fastpath_from_env)
    live_coalesce_s: float = 0.002
    # Archive downloads (server/file_send.py): sendfile threads, and how long one waits on a client taking nothing.
    archive_send_threads: int = ARCHIVE_SEND_THREADS  # 0 = stream every file range through the event loop
    archive_send_timeout_s: float = ARCHIVE_SEND_TIMEOUT_S
    # Subscribers replaying below the log read the archive (server/history.py): reads at once, and how far back.
    archive_replay_concurrency: int = 4
    archive_replay_lookback_s: float = 0.0  # 0 = the whole archive

    @classmethod
    def from_config(cls, cfg, zstd_dictionary: bytes = b"") -> ServerSettings:
        """The settings `jetstream serve` flags give (cfg is a jetstream.config.Config)."""
        return cls(
            max_sub_rate=cfg.max_sub_rate, per_ip_limit=cfg.per_ip_limit, max_conns_per_ip=cfg.max_conns_per_ip,
            trust_proxy_headers=cfg.trust_proxy_headers, max_client_message_bytes=cfg.max_client_message_bytes,
            ping_interval_s=cfg.ping_interval, pong_timeout_s=cfg.pong_timeout, hello_timeout_s=cfg.hello_timeout,
            handshake_timeout_s=cfg.handshake_timeout, max_request_bytes=cfg.max_request_bytes,
            max_pending_request_bytes=cfg.max_pending_request_bytes, max_ip_metric_labels=cfg.max_ip_metric_labels,
            max_lag_events=cfg.max_lag_events, max_lag_seconds=cfg.max_lag_seconds,
            max_lag_grace_s=cfg.max_lag_grace, zstd_dictionary=zstd_dictionary,
            live_fastpath=cfg.live_fastpath, live_coalesce_s=cfg.live_coalesce_ms / 1000.0,
            archive_send_threads=cfg.archive_send_threads, archive_send_timeout_s=cfg.archive_send_timeout,
            archive_replay_concurrency=cfg.archive_replay_concurrency,
            archive_replay_lookback_s=cfg.archive_replay_lookback,
        )

    @property
    def zstd_dictionary_id(self) -> int:
        return dictionary_id(self.zstd_dictionary)

    @property
    def v2_zstd_dictionary_id(self) -> int:
        return dictionary_id(self.v2_zstd_dictionary)

    @property
    def effective_pong_timeout_s(self) -> float:
        """picows requires the pong wait to fit inside the ping interval."""
        if self.ping_interval_s > 0:
            return min(self.pong_timeout_s, self.ping_interval_s)
        return self.pong_timeout_s

    @property
    def lag_limits(self) -> tuple[int, float, float]:
        """(max_lag_events, max_lag_seconds, grace_s) for each connection's LagPolicy."""
        return self.max_lag_events, self.max_lag_seconds, self.max_lag_grace_s
