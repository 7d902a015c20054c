"""One local-fleet harness: real Mosquitto brokers and real service processes on loopback.

In: a plan (sites, sensors, rates, sink), ephemeral ports, a work directory.
Out: running brokers (`mosquitto`), processes started and stopped by PID (`processes`), the
configs each service reads, and a whole site with its cloud (`fleet`). `saltmarsh demo`, the
tests, the benches and the lab build on it, never on a copy of it.
"""
