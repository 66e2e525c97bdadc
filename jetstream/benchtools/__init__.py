"""Benchmark helpers that run as their own processes (`python -m jetstream.benchtools.loadgen`).

Owns: load generators for bench/. It must never be imported by the daemon or the tests'
pass/fail logic; nothing here changes what the server does.
"""
