"""jetstream-py: a Jetstream v1 compatible firehose-to-JSON daemon.

Package map (one responsibility per folder):
  ingest/    relay websocket client, frame decode, CAR, record -> Go-compatible JSON, sequencer
  log/       the RocksDB event log (events, zstd bytes, relay cursor, time_us high-water mark)
  server/    the public websocket server: /subscribe, /, health, subscriber reader loop
  relaysim/  a fake relay speaking com.atproto.sync.subscribeRepos (tests and `make demo`)
  _core/     Cython hot paths (ring, filter, position compare-and-set, record JSON emitter)
  _py/       pure-Python twins of every _core routine; tests compare the two
"""

__version__ = "0.1.0"
