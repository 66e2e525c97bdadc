"""`jetstream serve --workers N`: one ingesting main process, N serving worker processes, one port.

Owns nothing itself; its modules own the parts:
  sockets.py     the listening sockets (SO_REUSEPORT) and the kernel rule keeping one client IP on one worker
  channel.py     the framed messages between the main process and a worker (wake-ups, status, metrics)
  secondary.py   a worker's read-only view of the log (a RocksDB secondary) and the feed of its live ring
  supervisor.py  the main process: ingest, the log read-write, starting/restarting/stopping workers,
                 the one /metrics listener summing every worker
  worker.py      a worker process: /subscribe, /, /healthz, /zstd-dictionary from its own ring and view
With --workers 1 none of this runs: `jetstream serve` is the single process of jetstream.daemon.
"""
