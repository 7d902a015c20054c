"""The operator's tools: the `saltmarsh` CLI and what its verbs run.

In: command lines, sink contents, status files and pillar.
Out: `cli` (every verb), `audit` (gaps and duplicates from a sink's keys), `pillar` (a new
site's pillar and secrets), `progress` (one live line for long work), and `localfleet` (real
brokers and services on loopback: the demo, the tests, the benches and the lab start them there).
"""
