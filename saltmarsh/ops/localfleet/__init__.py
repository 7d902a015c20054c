"""One local-fleet harness: real Mosquitto brokers and real service processes on loopback.

In: a plan (sites, sensors, rates, sink), ephemeral ports, a work directory.
Out, each piece usable alone: where the files go (`layout`), each service's config written from
its keys (`configs`), one broker or a gateway + cloud pair (`mosquitto`), a process started and
stopped by PID, or all a run started (`processes`), and a whole site with its cloud (`fleet`).
`saltmarsh demo`, the tests, the benches and the lab build on it, never on a copy of it.
"""
