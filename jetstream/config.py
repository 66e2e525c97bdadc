"""Command-line flags and their JETSTREAM_* environment variables.

Owns: every tunable of the daemon, its default and its parsing. Each flag can be
given on the command line or in the environment (`--event-ttl` <-> JETSTREAM_EVENT_TTL);
the command line wins. Names and defaults follow Jetstream v1 (README.md, Configuration)
where v1 has the flag; new flags say so in their help text.
It must never start anything: it only turns argv + environ into a Config.
"""
from __future__ import annotations

import argparse
import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """Go time.ParseDuration syntax ("24h", "1m30s", "250ms") -> seconds.

    A bare number is taken as seconds, a convenience v1 did not have.
    """
    text = text.strip()
    if not text:
        raise ValueError("empty duration")
    try:
        return float(text)
    except ValueError:
        pass
    sign = -1.0 if text.startswith("-") else 1.0
    body = text.lstrip("+-")
    pos, total = 0, 0.0
    for match in _DURATION_PART.finditer(body):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    if pos != len(body) or pos == 0:
        raise ValueError(f"invalid duration {text!r}")
    return sign * total


def parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "t", "true", "yes", "on"):
        return True
    if lowered in ("0", "f", "false", "no", "off"):
        return False
    raise ValueError(f"invalid boolean {text!r}")


def parse_unresolved_policy(text: str) -> str:
    """--unresolved-did: "pass" or "drop"."""
    value = text.strip().lower()
    if value not in ("pass", "drop"):
        raise ValueError(f"invalid policy {text!r} (pass or drop)")
    return value


def parse_listen_addr(text: str) -> tuple[str, int]:
    """':6008' -> ('0.0.0.0', 6008); '127.0.0.1:0' -> ('127.0.0.1', 0); '[::1]:80' -> ('::1', 80)."""
    host, _, port = text.rpartition(":")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


def _parse_ingest_collections(text: str) -> tuple[str, ...]:
    from jetstream.ingest.collection_filter import parse_ingest_collections

    return parse_ingest_collections(text)


@dataclass(frozen=True)
class Flag:
    name: str  # without leading dashes
    default: Any
    parse: Callable[[str], Any]
    help: str
    v1: bool = True  # False: a flag Jetstream v1 did not have
    aliases: tuple[str, ...] = ()  # other spellings accepted on the command line

    @property
    def env(self) -> str:
        return "JETSTREAM_" + self.name.upper().replace("-", "_")

    @property
    def attr(self) -> str:
        return self.name.replace("-", "_")


DEFAULT_RELAY_URL = "wss://bsky.network/xrpc/com.atproto.sync.subscribeRepos"

SERVE_FLAGS: tuple[Flag, ...] = (
    Flag("ws-url", DEFAULT_RELAY_URL, str, "full subscribeRepos URL of the relay"),
    Flag("listen-addr", ":6008", str, "public HTTP/websocket listen address"),
    Flag("metrics-listen-addr", ":6009", str, "Prometheus /metrics listen address"),
    Flag("data-dir", "./data", str, "directory of the RocksDB event log"),
    Flag("event-ttl", "24h", parse_duration, "retention of events, in the log and the live ring (Go duration)"),
    Flag("max-sub-rate", 5000.0, float, "events per second per client IP (token bucket, burst = rate)"),
    Flag("override-relay-cursor", -1, int, "if >= 0, start the relay from this seq instead of the stored cursor"),
    Flag("liveness-ttl", "15s", parse_duration, "relay silence after which the relay connection is dropped and re-dialled (v1 exited the process instead)"),
    Flag("zstd-dictionary-path", "", str, "zstd dictionary file for compressed clients (v1 declared but ignored it; we honour it); empty = the shipped jetstream-py dictionary", aliases=("zstd-dictionary",)),
    Flag("worker-count", 100, int, "accepted for v1 compatibility; ingest is a single ordered pipeline, so it is unused"),
    Flag("max-queue-size", 1000, int, "accepted for v1 compatibility; a no-op in v1 as well"),
    # Flags v1 did not have.
    Flag("ring-capacity", 200_000, int, "events held in memory for live readers; older ones are read from the log", v1=False),
    Flag("group-commit-ms", 2.0, float, "how long ingest gathers decoded events into one RocksDB write batch", v1=False),
    Flag("relay-backoff-initial", "500ms", parse_duration, "first delay before re-dialling the relay; doubles per failed attempt, with jitter", v1=False),
    Flag("relay-backoff-max", "30s", parse_duration, "cap of the relay re-dial delay", v1=False),
    Flag("ttl-trim-interval", "0s", parse_duration, "how often events older than --event-ttl are deleted; 0 = event-ttl/10, clamped to 0.5s..60s", v1=False),
    Flag("verify-mst", False, parse_bool, "also look each create/update up in the commit's MST as v1 did, dropping ops whose MST leaf is missing or differs from op.cid (default: op.cid's block hash only)", v1=False),
    Flag("fsync", False, parse_bool, "fsync the WAL on every batch (power-loss durability); kill -9 is safe either way", v1=False),
    Flag("log-level", "info", str, "debug | info | warning | error", v1=False),
    Flag("log-format", "text", str, "text (key=value) | json (one object per line)", v1=False),
    # Server limits and operations v1 did not have (issue 4).
    Flag("per-ip-limit", True, parse_bool, "share one --max-sub-rate bucket among an IP's connections (v1); false = a bucket per connection", v1=False),
    Flag("max-conns-per-ip", 0, int, "refuse /subscribe with 429 beyond this many connections from one IP (0 = no limit, as v1)", v1=False),
    Flag("trust-proxy-headers", False, parse_bool, "take the client IP from X-Forwarded-For / X-Real-IP (v1 always did; only behind a proxy you run)", v1=False),
    Flag("max-client-message-bytes", 10_000_000, int, "close (1009) clients sending a frame larger than this; v1 read and ignored them", v1=False),
    Flag("ping-interval", "30s", parse_duration, "ping a client after this long without hearing from it (v1 pinged every 30s); 0 disables", v1=False),
    Flag("pong-timeout", "30s", parse_duration, "close a client that neither answers a ping nor drains its stream within this (at most --ping-interval)", v1=False),
    Flag("max-ip-metric-labels", 10_000, int, "per-IP delivery counters kept for clients that have gone; the least recent beyond this are summed under ip_address=\"other\" (v1 kept all); 0 = no limit", v1=False),
    Flag("max-request-bytes", 1 << 20, int, "answer 431 to an HTTP request head longer than this (Go's default, as v1)", v1=False),
    Flag("max-pending-request-bytes", 64 << 20, int, "bytes of unfinished HTTP request heads all connections may hold at once; a connection that would exceed it gets 503", v1=False),
    Flag("handshake-timeout", "5s", parse_duration, "close a connection that has not completed its HTTP upgrade within this (slowloris, half-open)", v1=False),
    Flag("hello-timeout", "60s", parse_duration, "close requireHello=true clients that send no options_update within this (v1 waited forever); 0 disables", v1=False),
    # Slow-client policy (issue 5): v1 dropped a live client whose 50,000-message outbox filled
    # (1006, no reason); here a slow client falls back to log reads and is closed only by these.
    Flag("max-lag-events", 0, int, "close (1008, with a reason) a client whose socket holds it more than this many events behind, for --max-lag-grace; 0 = no limit", v1=False),
    Flag("max-lag-seconds", "0s", parse_duration, "close (1008, with a reason) a client whose socket holds it more than this far behind in time_us, for --max-lag-grace; 0 = no limit", v1=False),
    Flag("max-lag-grace", "30s", parse_duration, "how long a client may stay over a --max-lag-* limit without catching up before it is closed", v1=False),
    # Live fast path (issue 13): caught-up readers are served by one C pass per batch.
    Flag("live-fastpath", True, parse_bool, "serve caught-up readers with one C fan-out pass per batch instead of one Python step each; false = every reader steps on its own", v1=False),
    Flag("live-coalesce-ms", 2.0, float, "with 32+ caught-up readers, run live fan-out passes at most this often (ms): fuller, cheaper writes for at most this much added latency; 0 = a pass per batch", v1=False),
    # Cluster mode (issue 14, jetstream/cluster/): several nodes share one NATS JetStream stream.
    Flag("cluster", "", str, "comma-separated NATS server URLs (nats://h1:4222,nats://h2:4222,...); empty = single node with its own log", v1=False),
    Flag("node-name", "", str, "this node's name in the cluster (lease holder, /healthz); empty = the host name", v1=False),
    Flag("cluster-stream", "jetstream_events", str, "name of the NATS stream holding the cluster's events (its lease bucket is <name>_lease)", v1=False),
    Flag("cluster-replicas", 3, int, "replicas of the stream and the lease bucket (3 on a 3-server NATS cluster)", v1=False),
    Flag("lease-ttl", "10s", parse_duration, "ingest leader lease: a leader that cannot renew within this is replaced", v1=False),
    Flag("cluster-cursor-wait", "10s", parse_duration, "how long a subscriber whose cursor is ahead of this node's log waits for the node to catch up before a 1013 close", v1=False),
    # Commit signature verification (issue 16). Off by default: v1 did not verify, and it costs
    # CPU per commit plus a DID document fetch per new author (README "Commit signatures").
    Flag("verify-signatures", False, parse_bool, "verify each #commit's signature with its author's current key from the DID document, and drop commits whose rev is not above the last one seen for the DID", v1=False),
    Flag("plc-url", "https://plc.directory", str, "did:plc directory for --verify-signatures (GET <plc-url>/<did>)", v1=False),
    Flag("unresolved-did", "pass", parse_unresolved_policy, "--verify-signatures: what happens to a commit whose author's DID document cannot be had in time: pass (unverified, counted) or drop", v1=False),
    Flag("unresolved-did-wait", "10s", parse_duration, "--verify-signatures: how long a commit, and every frame after it (relay order is kept), waits for its author's DID document before --unresolved-did applies", v1=False),
    Flag("verify-max-held", 10_000, int, "--verify-signatures: frames held in relay order behind unresolved DIDs; beyond this the oldest gets --unresolved-did at once", v1=False),
    Flag("did-cache-size", 100_000, int, "--verify-signatures: DIDs whose signing key (or failure) is cached, least recently used evicted", v1=False),
    Flag("did-cache-ttl", "1h", parse_duration, "--verify-signatures: how long a resolved signing key is trusted before its DID document is fetched again (an #identity event forgets it at once)", v1=False),
    Flag("did-negative-ttl", "1m", parse_duration, "--verify-signatures: how long a failed DID resolution is remembered before trying again", v1=False),
    Flag("did-resolve-timeout", "5s", parse_duration, "--verify-signatures: time limit of one DID document fetch", v1=False),
    Flag("did-resolve-concurrency", 32, int, "--verify-signatures: DID document fetches in flight at once", v1=False),
    Flag("did-doc-max-bytes", 65_536, int, "--verify-signatures: larger DID documents are refused (the DID is unresolved)", v1=False),
    Flag("did-rev-cache-size", 200_000, int, "--verify-signatures: per-DID last commit revs held in memory; the rest are read from the log's did_revs column family", v1=False),
    Flag("did-rev-retention", "720h", parse_duration, "--verify-signatures: did_revs rows whose rev (a timestamp) is older than this are deleted by an hourly pass", v1=False),
    # What users asked for beyond v1 (issue 15): store fewer collections, count what is stored.
    Flag("ingest-collections", "", _parse_ingest_collections, "store only these commit collections (comma-separated NSIDs or prefix.*); identity/account/sync are always kept, other commits are dropped as not_ingested; empty = all", v1=False),
    Flag("stats-max-collections", 1000, int, "collections /stats/collections counts by name; later ones are summed under \"other\"", v1=False),
)

RELAY_SIM_FLAGS: tuple[Flag, ...] = (
    Flag("listen-addr", "127.0.0.1:6010", str, "where the fake relay listens", v1=False),
    Flag("frames-file", "", str, "recorded frames, zstd of [u32 LE length][frame]...; empty means --synthetic", v1=False),
    Flag("synthetic", False, parse_bool, "generate frames instead of replaying a file", v1=False),
    Flag("rate", 100.0, float, "frames per second (0 = as fast as the client reads)", v1=False),
    Flag("loops", 0, int, "how many times to play the file (0 = forever)", v1=False),
    Flag("seed", 1, int, "seed of the synthetic generator", v1=False),
    Flag("dids", 1000, int, "number of distinct repos in synthetic mode", v1=False),
    Flag("prerender", 0, int, "synthetic mode: render this many frames once and loop them with patched seqs (fast); 0 = generate each frame", v1=False),
    Flag("burst", 0, int, "the first N frames are sent as fast as the client reads, then --rate applies", v1=False),
    # Fault injection: 0 = off, an integer N = at every N-th seq, 0 < p < 1 = probability per seq.
    Flag("fault-garbage", 0.0, float, "insert a frame of random bytes before the faulty seqs", v1=False),
    Flag("fault-truncated", 0.0, float, "insert the first half of the frame before the faulty seqs", v1=False),
    Flag("fault-info", 0.0, float, "insert an #info frame before the faulty seqs", v1=False),
    Flag("fault-too-big", 0.0, float, "replace the faulty seqs' frames with tooBig #commits", v1=False),
    Flag("fault-sync", 0.0, float, "replace the faulty seqs' frames with #sync frames", v1=False),
    Flag("fault-duplicate", 0.0, float, "send the faulty seqs' frames twice", v1=False),
    Flag("fault-regress", 0.0, float, "after a faulty seq, resend the previous seq's frame", v1=False),
    Flag("fault-error", 0.0, float, "after a faulty seq, send an error frame (op -1) and close", v1=False),
    Flag("fault-disconnect", 0.0, float, "after a faulty seq, close the TCP connection without a close frame", v1=False),
    Flag("log-level", "info", str, "debug | info | warning | error", v1=False),
    Flag("log-format", "text", str, "text (key=value) | json (one object per line)", v1=False),
)


@dataclass
class Config:
    values: dict[str, Any] = field(default_factory=dict)

    def __getattr__(self, name: str) -> Any:
        try:
            return self.values[name]
        except KeyError as exc:
            raise AttributeError(name) from exc


def add_flags(parser: argparse.ArgumentParser, flags: tuple[Flag, ...], environ: dict[str, str]) -> None:
    for flag in flags:
        raw_default = environ.get(flag.env)
        default = flag.parse(raw_default) if raw_default is not None else flag.default
        if isinstance(default, str) and flag.parse is not str:
            default = flag.parse(default)
        # A bare boolean flag (`--synthetic`) means true, as with Go's flag package.
        bare = {"nargs": "?", "const": True} if flag.parse is parse_bool else {}
        parser.add_argument(
            f"--{flag.name}",
            *(f"--{alias}" for alias in flag.aliases),
            dest=flag.attr,
            type=flag.parse,
            default=default,
            **bare,
            help=f"{flag.help} [env {flag.env}, default {flag.default!r}]",
        )


def to_config(namespace: argparse.Namespace, flags: tuple[Flag, ...]) -> Config:
    return Config({flag.attr: getattr(namespace, flag.attr) for flag in flags})


def parse_serve_args(argv: list[str], environ: dict[str, str] | None = None) -> Config:
    """Parse `jetstream serve` flags (used by tests to build configs without a CLI)."""
    parser = argparse.ArgumentParser(prog="jetstream serve")
    add_flags(parser, SERVE_FLAGS, dict(os.environ if environ is None else environ))
    return to_config(parser.parse_args(argv), SERVE_FLAGS)
