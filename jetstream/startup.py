"""Start-up checks of `jetstream serve` that need the machine: files, directories, ports.

Owns: the probes run after every flag passed its own check (jetstream.config) and before
the daemon opens anything: no two of our own listen flags name the same address, --cluster's
NATS client is installed, the zstd dictionary file is readable and is a dictionary, the listen
addresses can be bound, the data dir exists or can be created and takes a file; and, with the
log just opened (before any port is bound), that --cluster is not given a log written without it.
Also StartupError (which flag, what went wrong) and the one `event=startup_failed` line
every start-up failure is reported as, with exit status 2.
It must never leave anything behind on failure: a probe binds and releases, writes and
removes; and it must never start a listener, the log or the relay itself.
"""
from __future__ import annotations

import logging
import os
import socket
import tempfile
from pathlib import Path

from jetstream.config import SERVE_FLAGS, Config, ConfigError, Flag, parse_listen_addr

log = logging.getLogger("jetstream.startup")

EXIT_STARTUP_FAILED = 2
_FLAGS_BY_NAME = {flag.name: flag for flag in SERVE_FLAGS}
# Every flag of `serve` that names an address the daemon listens on (one each).
LISTEN_FLAGS = ("listen-addr", "metrics-listen-addr")
_WILDCARDS = ("0.0.0.0", "::")


class StartupError(Exception):
    """`jetstream serve` cannot start because of what one flag names."""

    def __init__(self, flag: str | Flag, value: object, problem: str, source: str = "") -> None:
        # A name is a `serve` flag's; other commands (relay-sim) pass their own Flag.
        self.flag = flag if isinstance(flag, Flag) else _FLAGS_BY_NAME[flag]
        super().__init__(f"--{self.flag.name} = {value!r}: {problem}")
        self.value = value
        self.problem = problem
        self.source = source  # where the value came from, when known; else the line says "probe"


def report_startup_failure(error: StartupError | ConfigError, logger: logging.Logger = log) -> None:
    """The one line an operator reads: flag, environment variable, value and why."""
    flag: Flag = error.flag
    source = getattr(error, "source", "")
    # value=%r: always quoted, so an empty or numeric value reads as what was given.
    logger.error("event=startup_failed flag=--%s env=%s value=%r source=%s error=%s", flag.name, flag.env,
                 str(error.value), source or "probe", error.problem)


def _os_problem(exc: OSError) -> str:
    return exc.strerror or str(exc) if exc.errno is not None else str(exc)


def check_dictionary_file(path: str) -> None:
    if not path:
        return  # the shipped dictionary
    from jetstream.dictionary import dictionary_id

    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise StartupError("zstd-dictionary-path", path, f"cannot read it: {_os_problem(exc)}") from None
    if dictionary_id(data) == 0:
        raise StartupError("zstd-dictionary-path", path,
                           "not a zstd dictionary (no dictionary magic, or dictionary id 0)")


def check_bindable(flag_name: str | Flag, listen_addr: str) -> None:
    """Bind the address once and release it, so "address in use" is found before anything opens."""
    if not listen_addr:
        return  # metrics disabled
    host, port = parse_listen_addr(listen_addr)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise StartupError(flag_name, listen_addr, f"cannot resolve host {host!r}: {exc.strerror}") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        # As asyncio's create_server does: a port in TIME_WAIT is fine, one in use is not.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            raise StartupError(flag_name, listen_addr, f"cannot bind {host}:{port}: {_os_problem(exc)}") from None


def _host_addresses(host: str, port: int) -> set[str]:
    """The IP addresses `host` binds to; the host text itself when it does not resolve
    (check_bindable then reports that)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror:
        return {host}
    return {info[4][0] for info in infos}


def _overlap(first: set[str], second: set[str]) -> bool:
    """Two listeners on one port collide when they share an address or either takes them all
    (0.0.0.0; :: also takes IPv4 where IPv6 sockets are dual-stack, Linux's default)."""
    return bool(first & second) or bool((first | second) & set(_WILDCARDS))


def check_listen_addresses_distinct(cfg: Config) -> None:
    """Two of our own listen flags on one address: refused by name before anything binds.

    The bind probes below bind and release one address at a time, so they cannot see it;
    without this the daemon would create the data dir, bind the first and fail on the second
    with an "address in use" that does not say the other user is itself.
    """
    given = [(name, getattr(cfg, name.replace("-", "_"))) for name in LISTEN_FLAGS]
    given = [(name, text, *parse_listen_addr(text)) for name, text in given if text]
    for index, (name, text, host, port) in enumerate(given):
        for other, other_text, other_host, other_port in given[:index]:
            if port == 0 or port != other_port:
                continue  # port 0: the kernel picks a free port for each
            if _overlap(_host_addresses(host, port), _host_addresses(other_host, other_port)):
                other_env = _FLAGS_BY_NAME[other].env
                problem = (f"same port as --{other} ({other_env}) = {other_text!r}: two of our own listeners "
                           f"cannot share port {port}; give --{name} another port")
                raise StartupError(name, text, problem, source=cfg.sources.get(name.replace("-", "_"), ""))


def check_writable_dir(path: str) -> None:
    """Create the data dir if needed and write (then remove) a file in it.

    os.access() is no use here: as root it says yes even on a read-only filesystem.
    """
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".jetstream-write-probe-"):
            pass
    except FileExistsError:
        raise StartupError("data-dir", path, "exists and is not a directory") from None
    except OSError as exc:
        raise StartupError("data-dir", path, f"not writable: {_os_problem(exc)}") from None


def check_cluster_client(cluster: str) -> None:
    """--cluster needs the NATS client (nats-py, a dependency): an install without it is refused
    here, in one line, instead of failing inside the background task that joins."""
    if not cluster:
        return
    try:
        import nats  # noqa: F401
        import nats.js.api  # noqa: F401
    except ImportError as exc:
        raise StartupError("cluster", cluster,
                           f"the NATS client is not installed ({exc}): pip install 'jetstream-py[cluster]' "
                           "(or nats-py) into this daemon's environment") from None


def preflight(cfg: Config) -> None:
    """Every probe of the machine `serve` needs, in an order that leaves nothing behind."""
    check_listen_addresses_distinct(cfg)
    check_cluster_client(cfg.cluster)
    check_dictionary_file(cfg.zstd_dictionary_path)
    check_bindable("listen-addr", cfg.listen_addr)
    check_bindable("metrics-listen-addr", cfg.metrics_listen_addr)
    check_writable_dir(cfg.data_dir)  # last: it may create the directory


def refuse_single_node_log_in_cluster(cfg: Config, event_log) -> None:
    """--cluster on a data dir whose log was written without it: refuse (StartupError).

    A cluster node's log holds exactly the stream's messages, applied in order; a log that
    ingested on its own holds other events, with time_us the stream's are not above. Applying
    onto it could only fail forever (or serve its own events under the cluster's id). Called
    with the log just opened, before any listener is bound.
    """
    if not cfg.cluster or event_log.stream_seq() > 0 or event_log.bootstrap_pending():
        return  # a node's log (or one being filled from the archive: jetstream/cluster/bootstrap.py)
    hwm, cursor = event_log.hwm(), event_log.relay_cursor()
    if hwm == 0 and cursor is None:
        return  # a new (or never written) log: the node builds it from the stream
    raise StartupError(
        "data-dir", cfg.data_dir,
        f"holds a single-node event log (written without --cluster: newest time_us {hwm}, relay cursor {cursor}, "
        f"instance {event_log.instance_id()}); a cluster node's log must come from the stream alone. "
        f"Start this node with a fresh --data-dir, or run `jetstream cluster reset-node --data-dir {cfg.data_dir} "
        f"--yes` (deletes this log; the node then re-syncs from the stream)")
