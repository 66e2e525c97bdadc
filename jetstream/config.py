"""Command-line flags and their JETSTREAM_* environment variables.

Owns: every tunable of the daemon, its default, its parsing and its check (the valid
range or choices, `Flag(..., check=...)`), and ConfigError naming the flag, its variable
and where a refused value came from. Each flag can be
given on the command line or in the environment (`--event-ttl` <-> JETSTREAM_EVENT_TTL);
the command line wins. Each command has its own variables (`serve` JETSTREAM_*, `relay-sim`
RELAYSIM_*, `demo` JETSTREAM_DEMO_*), and a variable under a command's prefix that names no
flag is found (unknown_variables) so it can be warned about instead of ignored in silence. Names and defaults follow Jetstream v1 (docs/operations.md, Configuration)
where v1 has the flag; new flags say so in their help text.
It must never start anything: it only turns argv + environ into a Config.
"""
from __future__ import annotations

import argparse
import difflib
import os
import re
from dataclasses import dataclass, field, replace
from typing import Any, Callable
from urllib.parse import urlsplit

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


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity), at least 1."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def parse_workers(text) -> int:
    """`--workers`: a count >= 1, or "auto" for one per core this process may run on."""
    if isinstance(text, int):
        count = text
    elif str(text).strip().lower() == "auto":
        count = usable_cores()
    else:
        count = int(str(text).strip())
    return count


# Each worker is a whole process (an interpreter, its ring, a RocksDB secondary view that catches
# up after every batch): beyond a few per core they only compete for the CPU and the memory, and
# 1000 of them took a 2-core machine to a load of 119 and 5-7 GB within a minute (issue 22).
WORKERS_PER_CORE_MAX = 4


def max_workers() -> int:
    return WORKERS_PER_CORE_MAX * usable_cores()


def parse_verify_processes(text) -> int:
    """`--verify-processes`: a count >= 0 (0 = check signatures in the ingest loop), or "auto":
    one per core this process may run on, less the ingest loop's, at least one."""
    if isinstance(text, int):
        return text
    if str(text).strip().lower() == "auto":
        from jetstream.ingest.verifypool import default_processes

        return default_processes()
    return int(str(text).strip())


def parse_listen_addr(text: str) -> tuple[str, int]:
    """':6008' -> ('0.0.0.0', 6008); '127.0.0.1:0' -> ('127.0.0.1', 0); '[::1]:80' -> ('::1', 80).

    ValueError for anything else (no port, a port that is not 0..65535); port 0 asks the
    kernel for a free port (tests and one-off runs).
    """
    host, colon, port = text.strip().rpartition(":")
    if not colon or not port.isdigit():
        raise ValueError(f"{text!r} is not HOST:PORT (e.g. :6008, 127.0.0.1:6008, [::1]:6008)")
    if int(port) > 65535:
        raise ValueError(f"port {port} is out of range 0..65535")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


class Check:
    """A rule a parsed flag value must follow; `rule` is its wording in --help and errors."""

    def __init__(self, rule: str, ok: Callable[[Any], bool]) -> None:
        self.rule = rule
        self._ok = ok

    def __call__(self, value: Any) -> None:
        if not self._ok(value):
            raise ValueError(f"must be {self.rule}")


def at_least(minimum: float) -> Check:
    return Check(f">= {minimum:g}", lambda value: value >= minimum)


def above(minimum: float) -> Check:
    return Check(f"> {minimum:g}", lambda value: value > minimum)


def one_of(*choices: str) -> Check:
    return Check("one of " + ", ".join(choices), lambda value: value in choices)


def _is_listen_addr(text: str) -> bool:
    try:
        parse_listen_addr(text)
    except ValueError:
        return False
    return True


def _is_ws_url(text: str) -> bool:
    parts = urlsplit(text.strip())
    return parts.scheme in ("ws", "wss") and bool(parts.hostname)


LISTEN_ADDR = Check("HOST:PORT with a port in 0..65535 (0 = any free port)", _is_listen_addr)
OPTIONAL_LISTEN_ADDR = Check("HOST:PORT with a port in 0..65535, or empty to disable",
                             lambda text: text == "" or _is_listen_addr(text))
WS_URL = Check("a ws:// or wss:// URL with a host", _is_ws_url)


class _WorkersCheck(Check):
    """--workers: the refusal names this machine's limit and why there is one."""

    def __call__(self, value: int) -> None:
        if not 1 <= value <= max_workers():
            raise ValueError(f"must be between 1 and {max_workers()} ({WORKERS_PER_CORE_MAX} x the {usable_cores()} "
                             "cores this process may run on): each worker is a whole process, and more than that "
                             "only compete for CPU and memory")


WORKERS = _WorkersCheck(f"between 1 and {WORKERS_PER_CORE_MAX} x the cores this process may run on",
                        lambda value: 1 <= value <= max_workers())


def _is_nats_list(text: str) -> bool:
    urls = [part.strip() for part in text.split(",") if part.strip()]
    return text.strip() == "" or all(urlsplit(url).scheme in ("nats", "tls", "ws", "wss") and urlsplit(url).hostname for url in urls)


def _is_archive_url(text: str) -> bool:
    return not text or text.startswith(("s3://", "s3a://", "gs://", "az://", "azure://", "abfs://", "abfss://",
                                        "file://", "memory://"))


def _is_redirect(text: str) -> bool:
    if text in ("", "presign"):
        return True
    parts = urlsplit(text.strip())
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def _is_stream_name(text: str) -> bool:
    return bool(re.fullmatch(r"[A-Za-z0-9_-]+", text))


HTTP_URL = Check("an http:// or https:// URL with a host",
                 lambda text: urlsplit(text.strip()).scheme in ("http", "https") and bool(urlsplit(text.strip()).hostname))
DATA_DIR = Check("a directory that exists or can be created and takes a new file (probed at start-up)",
                 lambda text: bool(text.strip()))
DICTIONARY_FILE = Check("empty (the shipped dictionary) or a readable zstd dictionary file (probed at start-up)",
                        lambda text: True)
UNUSED = Check("unused, accepted for v1", lambda value: True)
LOG_LEVEL = one_of("debug", "info", "warning", "error")
LOG_FORMAT = one_of("text", "json")


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
    # Validation of the parsed value: raises ValueError with a sentence saying what is
    # allowed (see the checks below). Every flag gets one, so a bad value is refused at
    # startup instead of failing later inside a listener or a subscriber.
    check: Callable[[Any], None] | None = None
    # Each command reads its own variables (`relay-sim` must not take the daemon's
    # JETSTREAM_LISTEN_ADDR): <env_prefix><NAME>.
    env_prefix: str = "JETSTREAM_"
    # Non-empty: a flag kept only so old configurations still start. Hidden from --help; when
    # set, one warning line with this text (why it does nothing, what to use instead).
    deprecated: str = ""

    @property
    def expects(self) -> str:
        """What a value of this flag looks like, for --help and error messages."""
        return _EXPECTS.get(self.parse, "text")

    @property
    def env(self) -> str:
        return self.env_prefix + self.name.upper().replace("-", "_")

    @property
    def attr(self) -> str:
        return self.name.replace("-", "_")


DEFAULT_RELAY_URL = "wss://bsky.network/xrpc/com.atproto.sync.subscribeRepos"

SERVE_FLAGS: tuple[Flag, ...] = (
    Flag("ws-url", DEFAULT_RELAY_URL, str, "full subscribeRepos URL of the relay", check=WS_URL),
    Flag("listen-addr", ":6008", str, "public HTTP/websocket listen address", check=LISTEN_ADDR),
    Flag("metrics-listen-addr", ":6009", str, "Prometheus /metrics listen address", check=OPTIONAL_LISTEN_ADDR),
    Flag("data-dir", "./data", str, "directory of the RocksDB event log", check=DATA_DIR),
    Flag("event-ttl", "24h", parse_duration, "retention of events, in the log and the live ring (Go duration)", check=above(0)),
    Flag("max-sub-rate", 5000.0, float, "events per second per client IP (token bucket, burst = rate)", check=above(0)),
    Flag("override-relay-cursor", -1, int, "if >= 0, start the relay from this seq instead of the stored cursor", check=at_least(-1)),
    Flag("liveness-ttl", "15s", parse_duration, "relay silence after which the relay connection is dropped and re-dialled (v1 exited the process instead)", check=above(0)),
    Flag("zstd-dictionary-path", "", str, "zstd dictionary file for compressed clients (v1 declared but ignored it; we honour it); empty = the shipped jetstream-py dictionary", aliases=("zstd-dictionary",), check=DICTIONARY_FILE),
    Flag("worker-count", 100, int, "accepted for v1 compatibility; ingest is a single ordered pipeline, so it is unused", check=UNUSED,
         deprecated="v1's ingest worker count, unused here (ingest is one ordered pipeline); --workers sets the processes serving subscribers"),
    Flag("max-queue-size", 1000, int, "accepted for v1 compatibility; a no-op in v1 as well", check=UNUSED),
    # Flags v1 did not have.
    Flag("ring-capacity", 200_000, int, "events held in memory for live readers; older ones are read from the log", v1=False, check=at_least(1)),
    Flag("group-commit-ms", 2.0, float, "how long ingest gathers decoded events into one RocksDB write batch", v1=False, check=at_least(0)),
    Flag("relay-backoff-initial", "500ms", parse_duration, "first delay before re-dialling the relay; doubles per failed attempt, with jitter", v1=False, check=above(0)),
    Flag("relay-backoff-max", "30s", parse_duration, "cap of the relay re-dial delay", v1=False, check=above(0)),
    Flag("relay-stall-threshold", "60s", parse_duration, "/healthz turns 503 degraded (relay_stalled, relay_unreachable) once no relay event has been stored, or the relay not been reached, for this long", v1=False, check=above(0)),
    Flag("ttl-trim-interval", "0s", parse_duration, "how often events older than --event-ttl are deleted; 0 = event-ttl/10, clamped to 0.5s..60s", v1=False, check=at_least(0)),
    Flag("verify-mst", False, parse_bool, "also look each create/update up in the commit's MST as v1 did, dropping ops whose MST leaf is missing or differs from op.cid (default: op.cid's block hash only)", v1=False),
    Flag("fsync", False, parse_bool, "fsync the WAL on every batch (power-loss durability); kill -9 is safe either way", v1=False),
    Flag("log-level", "info", str, "debug | info | warning | error", v1=False, check=LOG_LEVEL),
    Flag("log-format", "text", str, "text (key=value) | json (one object per line)", v1=False, check=LOG_FORMAT),
    # Server limits and operations v1 did not have (issue 4).
    Flag("per-ip-limit", True, parse_bool, "share one --max-sub-rate bucket among an IP's connections (v1); false = a bucket per connection", v1=False),
    Flag("max-conns-per-ip", 0, int, "refuse /subscribe with 429 beyond this many connections from one IP (0 = no limit, as v1)", v1=False, check=at_least(0)),
    Flag("trust-proxy-headers", False, parse_bool, "take the client IP from X-Forwarded-For / X-Real-IP (v1 always did; only behind a proxy you run)", v1=False),
    Flag("max-client-message-bytes", 10_000_000, int, "close (1009) clients sending a frame larger than this; v1 read and ignored them", v1=False, check=at_least(1)),
    Flag("ping-interval", "30s", parse_duration, "ping a client after this long without hearing from it (v1 pinged every 30s); 0 disables", v1=False, check=at_least(0)),
    Flag("pong-timeout", "30s", parse_duration, "close a client that neither answers a ping nor drains its stream within this (at most --ping-interval)", v1=False, check=above(0)),
    Flag("max-ip-metric-labels", 10_000, int, "per-IP delivery counters kept for clients that have gone; the least recent beyond this are summed under ip_address=\"other\" (v1 kept all); 0 = no limit", v1=False, check=at_least(0)),
    Flag("max-request-bytes", 1 << 20, int, "answer 431 to an HTTP request head longer than this (Go's default, as v1)", v1=False, check=at_least(1)),
    Flag("max-pending-request-bytes", 64 << 20, int, "bytes of unfinished HTTP request heads all connections may hold at once; a connection that would exceed it gets 503", v1=False, check=at_least(1)),
    Flag("handshake-timeout", "5s", parse_duration, "close a connection that has not completed its HTTP upgrade within this (slowloris, half-open)", v1=False, check=above(0)),
    Flag("hello-timeout", "60s", parse_duration, "close requireHello=true clients that send no options_update within this (v1 waited forever); 0 disables", v1=False, check=at_least(0)),
    # Slow-client policy (issue 5): v1 dropped a live client whose 50,000-message outbox filled
    # (1006, no reason); here a slow client falls back to log reads and is closed only by these.
    Flag("max-lag-events", 0, int, "close (1008, with a reason) a client whose socket holds it more than this many events behind, for --max-lag-grace; 0 = no limit", v1=False, check=at_least(0)),
    Flag("max-lag-seconds", "0s", parse_duration, "close (1008, with a reason) a client whose socket holds it more than this far behind in time_us, for --max-lag-grace; 0 = no limit", v1=False, check=at_least(0)),
    Flag("max-lag-grace", "30s", parse_duration, "how long a client may stay over a --max-lag-* limit without catching up before it is closed", v1=False, check=at_least(0)),
    # Live fast path (issue 13): caught-up readers are served by one C pass per batch.
    # Off by default for now: with --cluster, a live reader on the fast path missed an event
    # (tests/cluster/test_cluster_nodes.py::test_a_cursor_moves_between_nodes_without_gap_or_duplicate
    # fails with it on); until that is found, no path that can lose an event is the default.
    Flag("live-fastpath", True, parse_bool, "serve caught-up readers with one C fan-out pass per batch instead of one Python step each; false = every reader steps on its own", v1=False),
    Flag("live-coalesce-ms", 2.0, float, "with 32+ caught-up readers, run live fan-out passes at most this often (ms): fuller, cheaper writes for at most this much added latency; 0 = a pass per batch", v1=False, check=at_least(0)),
    # Cluster mode (issue 14, jetstream/cluster/): several nodes share one NATS JetStream stream.
    Flag("cluster", "", str, "comma-separated NATS server URLs (nats://h1:4222,nats://h2:4222,...); empty = single node with its own log", v1=False, check=Check("empty (single node) or comma-separated nats:// (or tls://, ws://) URLs", _is_nats_list)),
    Flag("node-name", "", str, "this node's name in the cluster (lease holder, /healthz); empty = the host name", v1=False, check=Check("any name (empty = the host name)", lambda value: True)),
    Flag("cluster-stream", "jetstream_events", str, "name of the NATS stream holding the cluster's events (its lease bucket is <name>_lease)", v1=False, check=Check("a NATS stream name (letters, digits, - and _)", _is_stream_name)),
    Flag("cluster-replicas", 3, int, "replicas of the stream and the lease bucket (3 on a 3-server NATS cluster)", v1=False, check=at_least(1)),
    Flag("lease-ttl", "10s", parse_duration, "ingest leader lease: a leader that cannot renew within this is replaced", v1=False, check=above(0)),
    Flag("cluster-cursor-wait", "10s", parse_duration, "how long a subscriber whose cursor is ahead of this node's log waits for the node to catch up before a 1013 close", v1=False, check=at_least(0)),
    # Commit signature verification (issue 16). Off by default: v1 did not verify, and it costs
    # CPU per commit plus a DID document fetch per new author (docs/operations.md, "Commit signatures").
    Flag("verify-signatures", False, parse_bool, "verify each #commit's signature with its author's current key from the DID document, and drop commits whose rev is not above the last one seen for the DID", v1=False),
    Flag("plc-url", "https://plc.directory", str, "did:plc directory for --verify-signatures (GET <plc-url>/<did>)", v1=False, check=HTTP_URL),
    Flag("unresolved-did", "pass", parse_unresolved_policy, "--verify-signatures: what happens to a commit whose author's DID document cannot be had in time: pass (unverified, counted) or drop", v1=False, check=one_of("pass", "drop")),
    Flag("unresolved-did-wait", "10s", parse_duration, "--verify-signatures: how long a commit, and every frame after it (relay order is kept), waits for its author's DID document before --unresolved-did applies", v1=False, check=above(0)),
    Flag("verify-max-held", 10_000, int, "--verify-signatures: frames held in relay order behind unresolved DIDs; beyond this the oldest gets --unresolved-did at once", v1=False, check=at_least(1)),
    Flag("did-cache-size", 100_000, int, "--verify-signatures: DIDs whose signing key (or failure) is cached, least recently used evicted", v1=False, check=at_least(1)),
    Flag("did-cache-ttl", "1h", parse_duration, "--verify-signatures: how long a resolved signing key is trusted before its DID document is fetched again (an #identity event forgets it at once)", v1=False, check=above(0)),
    Flag("did-negative-ttl", "1m", parse_duration, "--verify-signatures: how long a failed DID resolution is remembered before trying again", v1=False, check=at_least(0)),
    Flag("did-resolve-timeout", "5s", parse_duration, "--verify-signatures: time limit of one DID document fetch", v1=False, check=above(0)),
    Flag("did-resolve-concurrency", 32, int, "--verify-signatures: DID document fetches in flight at once", v1=False, check=at_least(1)),
    Flag("did-doc-max-bytes", 65_536, int, "--verify-signatures: larger DID documents are refused (the DID is unresolved)", v1=False, check=at_least(1)),
    Flag("did-rev-cache-size", 200_000, int, "--verify-signatures: per-DID last commit revs held in memory; the rest are read from the log's did_revs column family", v1=False, check=at_least(1)),
    Flag("verify-processes", "auto", parse_verify_processes, "--verify-signatures: processes checking signatures beside the ingest loop, in batches; 0 = check them in the ingest loop; auto = one per core less one, at least 1", v1=False, check=at_least(0)),
    Flag("did-rev-retention", "720h", parse_duration, "--verify-signatures: did_revs rows whose rev (a timestamp) is older than this are deleted by an hourly pass", v1=False, check=above(0)),
    # What users asked for beyond v1 (issue 15): store fewer collections, count what is stored.
    Flag("ingest-collections", "", _parse_ingest_collections, "store only these commit collections (comma-separated NSIDs or prefix.*); identity/account/sync are always kept, other commits are dropped as not_ingested; empty = all", v1=False, check=Check("empty (all) or comma-separated NSIDs / prefix.* entries", lambda value: True)),
    Flag("stats-max-collections", 1000, int, "collections /stats/collections counts by name; later ones are summed under \"other\"", v1=False, check=at_least(0)),
    # Serving on every core (issue 13): worker processes behind one port (jetstream/workers/).
    Flag("workers", "1", parse_workers, "processes serving /subscribe on the listen port (SO_REUSEPORT, one client IP per worker); the main process ingests; 1 = one process; auto = one per core", v1=False, check=WORKERS),
    # The sealed history archive (issue 24, jetstream/archive/): v2's planSnapshot, getSegment, getBlock, listSegments.
    Flag("archive", True, parse_bool, "serve the sealed segments of --archive-dir over Jetstream v2's archive endpoints (planSnapshot, getSegment, getBlock, listSegments); false = those paths are unknown", v1=False),
    Flag("archive-dir", "", str, "directory of sealed seg_<base36>.jss segments; empty = <data-dir>/archive", v1=False, check=Check("a directory path (empty = <data-dir>/archive)", lambda value: True)),
    Flag("archive-api-key", "", str, "require `Authorization: Bearer <key>` on the archive endpoints (401 AuthRequired otherwise); empty = open, as v2", v1=False, check=Check("any text (empty = no key)", lambda value: True)),
    Flag("plan-max-entries", 100_000, int, "work units (whole segments or block ranges) one planSnapshot page may hold, at least one; the client pages on with plannedThroughSeq (v2's flag and default); 0 = no limit", v1=False, check=at_least(0)),
    Flag("archive-footer-cache-bytes", 256 << 20, int, "segment footers (block index, DID blooms, collection index) kept in memory for planSnapshot, least recently used evicted; a DID plan probes uncached segment blooms with one 64-byte read", v1=False, check=at_least(0)),
    Flag("archive-max-body-bytes", 2 << 20, int, "largest planSnapshot request body read (413 TooLarge beyond; v2's 2 MB)", v1=False, check=at_least(1)),
    Flag("archive-send-threads", 8, int, "getSegment/getBlock downloads sent at once by sendfile threads (file to socket, no copy through Python); further ones are streamed through the event loop; 0 = always stream", v1=False, check=at_least(0)),
    Flag("archive-send-timeout", "60s", parse_duration, "a download whose client takes no bytes for this long is aborted, freeing its send thread", v1=False, check=above(0)),
    Flag("archive-url", "", str, "object store holding the sealed segments instead of a directory: s3://bucket/prefix, gs://bucket/prefix, az://container/prefix or file:///path (credentials and endpoint from the usual AWS_* / GOOGLE_* / AZURE_* environment); empty = --archive-dir", v1=False, check=Check("empty, or a URL starting s3://, gs://, az://, azure://, abfs(s)://, file:// or memory://", _is_archive_url)),
    Flag("archive-cache-bytes", 4 << 30, int, "--archive-url: disk each serving process may use under <data-dir>/archive/cache/ for segment bytes fetched from the store (whole segment files dropped least recently used first; emptied at start)", v1=False, check=at_least(64 << 10)),
    Flag("archive-cache-chunk-bytes", 8 << 20, int, "--archive-url: the aligned range the cache fetches from the store at a time (the SDK reads segments in 8 MiB slices)", v1=False, check=at_least(4 << 10)),
    Flag("archive-redirect", "", str, "--archive-url: answer getSegment with a 307 redirect instead of the bytes: `presign` (a presigned GET URL of the object; S3, GCS, Azure) or a URL prefix the segment name is appended to (a CDN in front of the bucket), once every byte of that segment version was checked by this node (its first sweep is served, and checked, by the daemon; remembered across restarts); getBlock is always served; empty = serve the bytes through the cache", v1=False, check=Check("empty, presign, or an http(s):// URL prefix", _is_redirect)),
    Flag("archive-redirect-expiry", "1h", parse_duration, "--archive-redirect presign: how long a presigned URL is valid", v1=False, check=above(0)),
    # History on the live wire (issue 24, jetstream/server/history.py): subscribers below the log read sealed segments.
    Flag("archive-replay-concurrency", 4, int, "segment blocks read at once (per serving process) for subscribers replaying below the log (v2 subscribeEvents and v1 /subscribe cursors older than the log); each read runs in a thread, further readers wait their turn", v1=False, check=at_least(1)),
    Flag("archive-replay-lookback", "0s", parse_duration, "how far back a subscriber cursor may replay from the archive (rounded down to a segment's start); older v2 cursors get CursorTooOld / #info OutdatedCursor, older v1 cursors start at that floor; 0 = the whole archive", v1=False, check=at_least(0)),
    # The archive writer (issue 24, jetstream/archive/sealer.py): the process that ingests seals the log into segments.
    Flag("archive-block-events", 4096, int, "--archive: a segment block is cut when it holds this many events (v2's 4096)", v1=False, check=Check("between 1 and 262144", lambda value: 1 <= value <= 262_144)),
    Flag("archive-block-seconds", "30s", parse_duration, "--archive: a segment block is cut when its events span this long, or its first event is this old (Go duration)", v1=False, check=above(0)),
    Flag("archive-segment-bytes", 256 << 20, int, "--archive: a segment is sealed at the first block cut that takes it past this size", v1=False, check=at_least(1)),
    Flag("archive-seal-after", "1h", parse_duration, "--archive: a segment is sealed once its first event is this old, whatever its size (Go duration)", v1=False, check=above(0)),
    Flag("archive-scrub-interval", "168h", parse_duration, "--archive on this machine's disk (a directory, or file://): every sealed segment is read back and checked whole (block checksums, footer) once per this interval, so bytes that rot on disk after they were first checked are found and refused (/healthz archive_segment_corrupt) instead of served; a pass resumes where it stopped after a restart; object stores are never scrubbed (they checksum their own bytes); 0 = off", v1=False, check=at_least(0)),
    Flag("archive-scrub-rate", 32 << 20, int, "bytes per second the archive scrub reads at most (its reads compete with serving for the disk)", v1=False, check=at_least(1)),
    Flag("archive-retention", "0s", parse_duration, "--archive: sealed segments whose newest event is older than this are deleted (the newest segment is always kept); 0 = keep forever", v1=False, check=at_least(0)),
)

RELAY_SIM_ENV_PREFIX = "RELAYSIM_"  # relay-sim's own variables, never the daemon's
DEMO_ENV_PREFIX = "JETSTREAM_DEMO_"  # `jetstream demo`'s own variables, never the daemon's

RELAY_SIM_FLAGS: tuple[Flag, ...] = tuple(replace(flag, env_prefix=RELAY_SIM_ENV_PREFIX) for flag in (
    Flag("listen-addr", "127.0.0.1:6010", str, "where the fake relay listens", v1=False, check=LISTEN_ADDR),
    Flag("frames-file", "", str, "recorded frames, zstd of [u32 LE length][frame]...; empty means --synthetic", v1=False),
    Flag("synthetic", False, parse_bool, "generate frames instead of replaying a file", v1=False),
    Flag("rate", 100.0, float, "frames per second (0 = as fast as the client reads)", v1=False, check=at_least(0)),
    Flag("loops", 0, int, "how many times to play the file (0 = forever)", v1=False, check=at_least(0)),
    Flag("seed", 1, int, "seed of the synthetic generator", v1=False),
    Flag("dids", 1000, int, "number of distinct repos in synthetic mode", v1=False, check=at_least(1)),
    Flag("prerender", 0, int, "synthetic mode: render this many frames once and loop them with patched seqs (fast); 0 = generate each frame", v1=False, check=at_least(0)),
    Flag("burst", 0, int, "the first N frames are sent as fast as the client reads, then --rate applies", v1=False, check=at_least(0)),
    # Like a real relay (issue 17): restarts continue above earlier seqs, frame times are now.
    Flag("clock", True, parse_bool, "take seqs and frame times from the wall clock (seconds x rate; a restarted relay-sim continues above its earlier seqs, a cursor ahead of the head gets FutureCursor); false = the recording's own seqs and times", v1=False),
    # Fault injection: 0 = off, an integer N = at every N-th seq, 0 < p < 1 = probability per seq.
    Flag("fault-garbage", 0.0, float, "insert a frame of random bytes before the faulty seqs", v1=False, check=at_least(0)),
    Flag("fault-truncated", 0.0, float, "insert the first half of the frame before the faulty seqs", v1=False, check=at_least(0)),
    Flag("fault-info", 0.0, float, "insert an #info frame before the faulty seqs", v1=False, check=at_least(0)),
    Flag("fault-too-big", 0.0, float, "replace the faulty seqs' frames with tooBig #commits", v1=False, check=at_least(0)),
    Flag("fault-sync", 0.0, float, "replace the faulty seqs' frames with #sync frames", v1=False, check=at_least(0)),
    Flag("fault-duplicate", 0.0, float, "send the faulty seqs' frames twice", v1=False, check=at_least(0)),
    Flag("fault-regress", 0.0, float, "after a faulty seq, resend the previous seq's frame", v1=False, check=at_least(0)),
    Flag("fault-error", 0.0, float, "after a faulty seq, send an error frame (op -1) and close", v1=False, check=at_least(0)),
    Flag("fault-disconnect", 0.0, float, "after a faulty seq, close the TCP connection without a close frame", v1=False, check=at_least(0)),
    Flag("log-level", "info", str, "debug | info | warning | error", v1=False, check=LOG_LEVEL),
    Flag("log-format", "text", str, "text (key=value) | json (one object per line)", v1=False, check=LOG_FORMAT),
))

# Variables under a command's prefix that are ours but name no flag: implementation and test
# switches. Anything else under JETSTREAM_ (or RELAYSIM_) is warned about at start-up as
# naming no flag (a typo, EVENTTTL for EVENT_TTL, would otherwise be ignored in silence).
# tests/operator/test_env_and_flags.py checks every JETSTREAM_* name the code reads is a flag's or here.
ENV_NOT_FLAGS: dict[str, str] = {
    "JETSTREAM_PURE_PYTHON": "use the pure-Python twins instead of the compiled core (jetstream/implementation.py)",
    "JETSTREAM_DEMO_SECONDS": "stop `jetstream demo` / `make cluster-demo` after this many seconds",
    "JETSTREAM_BENCH_QUICK": "bench/bench_gates.py: the quick variant (bench/check.py --quick)",
    "JETSTREAM_TEST_S3_URL": "tests/archive/test_store_s3.py: also run the object-store tests against this s3:// URL",
}


@dataclass
class Config:
    values: dict[str, Any] = field(default_factory=dict)
    # Where each value came from: "command line", "environment" or "default" (by attr name).
    sources: dict[str, str] = field(default_factory=dict)

    def __getattr__(self, name: str) -> Any:
        try:
            return self.values[name]
        except KeyError as exc:
            raise AttributeError(name) from exc


_EXPECTS: dict[Callable[[str], Any], str] = {
    int: "an integer",
    float: "a number",
    parse_duration: "a duration (24h, 1m30s, 250ms, or seconds)",
    parse_bool: "true or false",
    parse_unresolved_policy: "a policy",
    _parse_ingest_collections: "a collection list",
    parse_workers: "a count or auto",
    parse_verify_processes: "a count or auto",
}
_METAVARS: dict[Callable[[str], Any], str] = {int: "N", float: "X", parse_duration: "DURATION", parse_bool: "BOOL"}


class ConfigError(ValueError):
    """A flag's value is unusable: which flag, where the value came from, and why."""

    def __init__(self, flag: Flag, source: str, value: Any, problem: str) -> None:
        super().__init__(f"--{flag.name} ({flag.env}) = {value!r} from the {source}: {problem}")
        self.flag = flag
        self.source = source  # "command line", "environment" or "default"
        self.value = value
        self.problem = problem


def describe_rule(flag: Flag) -> str:
    """What a valid value of `flag` is, in words (--help, the docs/operations.md table)."""
    rule = getattr(flag.check, "rule", "")
    if not rule:
        return flag.expects
    return rule if flag.parse is str else f"{flag.expects}, {rule}"


def add_flags(parser: argparse.ArgumentParser, flags: tuple[Flag, ...], environ: dict[str, str] | None = None) -> None:
    """Declare `flags` on `parser`; values stay raw text until resolve_flags() checks them.

    (argparse's own type= would report a bad value as "invalid parse_duration value" and
    could not say which environment variable it came from.) `environ` is unused here and
    kept for callers; the environment is read by resolve_flags.
    """
    # So `--event-ttl -5s` reaches the check (and gets its clear error) instead of argparse
    # taking "-5s" for an unknown option: argparse only treats plain negative numbers as values.
    parser._negative_number_matcher = re.compile(r"^-\d")
    for flag in flags:
        # A bare boolean flag (`--synthetic`) means true, as with Go's flag package.
        bare = {"nargs": "?", "const": "true"} if flag.parse is parse_bool else {}
        described = f"{flag.help} [{describe_rule(flag)}; env {flag.env}, default {flag.default!r}]"
        parser.add_argument(
            f"--{flag.name}",
            *(f"--{alias}" for alias in flag.aliases),
            dest=flag.attr,
            default=None,
            metavar=_METAVARS.get(flag.parse, "VALUE"),
            **bare,
            # A deprecated flag still parses (old configurations start) but is not offered.
            help=argparse.SUPPRESS if flag.deprecated else described,
        )


def resolve_flag(flag: Flag, raw: Any, source: str) -> Any:
    """The parsed, checked value of `flag` from `raw` text (or an already typed default)."""
    value = raw
    if isinstance(raw, str) and flag.parse is not str:
        try:
            value = flag.parse(raw)
        except ValueError as exc:
            # A project parser's own message says which part is wrong; int()'s would only confuse.
            detail = "" if flag.parse in (int, float) else f" ({exc})"
            raise ConfigError(flag, source, raw, f"not {flag.expects}{detail}") from None
    if flag.check is not None:
        try:
            flag.check(value)
        except ValueError as exc:
            raise ConfigError(flag, source, raw, str(exc)) from None
    return value


def resolve_flags(namespace: argparse.Namespace, flags: tuple[Flag, ...], environ: dict[str, str]) -> Config:
    """Every flag's value: command line, else JETSTREAM_<NAME>, else the default; checked.

    Raises ConfigError for the first unusable value, before anything is opened or bound.
    """
    values, sources, raws = {}, {}, {}
    for flag in flags:
        given = getattr(namespace, flag.attr, None)
        if given is not None:
            raw, source = given, "command line"
        elif flag.env in environ:
            raw, source = environ[flag.env], "environment"
        else:
            raw, source = flag.default, "default"
        values[flag.attr] = resolve_flag(flag, raw, source)
        sources[flag.attr] = source
        raws[flag.attr] = raw
    check_flag_combinations(flags, values, sources, raws)
    return Config(values, sources)


def deprecated_flags_set(cfg: Config, flags: tuple[Flag, ...]) -> list[Flag]:
    """The deprecated flags `cfg` got from the command line or the environment."""
    return [flag for flag in flags if flag.deprecated and cfg.sources.get(flag.attr, "default") != "default"]


def unknown_variables(environ: dict[str, str], flags: tuple[Flag, ...]) -> list[tuple[str, str]]:
    """(variable, closest real name or "") for each variable under these flags' prefix naming no flag.

    Only the prefix of `flags` is looked at, less other commands' prefixes inside it
    (JETSTREAM_DEMO_* belongs to `jetstream demo`, not to `serve`), less ENV_NOT_FLAGS.
    """
    prefixes = {flag.env_prefix for flag in flags}
    known = {flag.env for flag in flags}
    ours = known | {name for name in ENV_NOT_FLAGS if any(name.startswith(prefix) for prefix in prefixes)}
    others = tuple(prefix for prefix in (DEMO_ENV_PREFIX, RELAY_SIM_ENV_PREFIX)
                   if prefix not in prefixes and any(prefix.startswith(mine) for mine in prefixes))
    unknown = []
    for name in sorted(environ):
        if not name.startswith(tuple(prefixes)) or name.startswith(others) or name in ours:
            continue
        closest = difflib.get_close_matches(name, sorted(ours), n=1, cutoff=0.6)
        unknown.append((name, closest[0] if closest else ""))
    return unknown


def check_flag_combinations(flags: tuple[Flag, ...], values: dict[str, Any], sources: dict[str, str],
                            raws: dict[str, Any]) -> None:
    """Flags each valid alone but not together: ConfigError naming the second one, before anything opens."""
    if values.get("cluster") and values.get("verify_signatures"):
        flag = next(flag for flag in flags if flag.attr == "verify_signatures")
        raise ConfigError(flag, sources["verify_signatures"], raws["verify_signatures"],
                          "not supported with --cluster: the per-DID revs the check keeps live in one node's log and "
                          "are not replicated through the stream; run the cluster without it, or verify on a single node")


def to_config(namespace: argparse.Namespace, flags: tuple[Flag, ...], environ: dict[str, str] | None = None) -> Config:
    return resolve_flags(namespace, flags, dict(os.environ if environ is None else environ))


def parse_serve_args(argv: list[str], environ: dict[str, str] | None = None) -> Config:
    """Parse `jetstream serve` flags (used by tests to build configs without a CLI); ConfigError if invalid."""
    parser = argparse.ArgumentParser(prog="jetstream serve")
    add_flags(parser, SERVE_FLAGS)
    return to_config(parser.parse_args(argv), SERVE_FLAGS, environ)
