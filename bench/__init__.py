"""Benchmarks for the saltmarsh data path, each side by side with a peer in the same run.

In:  real Mosquitto brokers and real saltmarsh services started as processes on loopback.
Out: figures (medians of repeated runs) printed with their ratio to the peer, and written with
     the machine, versions and date to `bench/RESULTS.md` (the data lives in `results.json`).

`python -m bench` runs every bench at full size; `--quick` runs reduced sizes once, for
development; `--only ceiling,forwarder` picks benches. These are measurements, never tests:
nothing here asserts, the targets table says pass or miss.
"""
