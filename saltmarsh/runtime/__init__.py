"""What every long-running hop runs on: the crash-safe spool, status files, logs, the daemon shell.

In: messages to keep (`spool`), counters to publish (`status`), log records (`logs`), a service's
`run()` and its config loader (`daemon`), and failures to wait out (`backoff`).
Out: segments on disk until they are confirmed downstream, one JSON status file per service,
one JSON log line per record on stdout, and exit codes 0/1/2.
"""
