"""Which instance is serving: the one place the instance id is read from.

Owns: `instance_id_of`, the id clients see in `/healthz` (`instance`) and in the 101
response's `Jetstream-Instance` header. Today it is the event log's own id (created with
the log, kept across restarts); a cluster of daemons sharing one stream would answer its
cluster's id here instead, so clients do not see a switch between its members.
It must never create or change an id itself: the log owns it.
"""
from __future__ import annotations

INSTANCE_HEADER = "Jetstream-Instance"


def instance_id_of(event_log) -> str:
    """The id of the stream `event_log` holds."""
    return event_log.instance_id()


def cluster_instance_id(stream_name: str, stream_created: str) -> str:
    """Cluster mode: the id every node of one cluster answers (32 hex digits, like a log's).

    Derived from the NATS stream's name and creation time, which every node reads alike,
    so moving between nodes shows no switch; a stream deleted and made again is a new id.
    """
    import hashlib

    return hashlib.sha256(f"{stream_name}\0{stream_created}".encode()).hexdigest()[:32]

