"""One module per bench. Each has `NAME`, `TITLE` and `run(options) -> BenchReport`."""
