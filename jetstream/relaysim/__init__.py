"""The fake relay (`jetstream relay-sim`): serves com.atproto.sync.subscribeRepos frames
from a recording or a deterministic generator, for tests, benchmarks and the demo.

Owns: everything under this package (see server.py for the entry points).
It must never be imported by the daemon's serving path.
"""
