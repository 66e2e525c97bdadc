"""Cluster mode (`jetstream serve --cluster nats://…`): several nodes, one replicated log.

Owns: everything that lets nodes share one event history through a NATS JetStream
stream: the leader lease (`lease`), the fenced publisher of ingest batches (`publisher`),
the applier that writes the stream into the local log (`applier`), the message layout
(`wire`), the node that ties them to the daemon (`node`), and real nats-server processes
for tests and the demo (`natsserver`). Without `--cluster` nothing here is imported.
It must never write the local log by any path but the applier: the leader's own events
reach its log the same way a follower's do, by applying the stream.
"""
