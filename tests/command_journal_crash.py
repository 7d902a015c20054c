"""A process for tests/test_command_journal.py to kill -9 at a point of a command's journal.

argv: JOURNAL CMD_ID OP IDEMPOTENT(0|1) STOP(intent|result). It begins the command, finishes
it too when STOP is `result`, prints STOP and sleeps until it is killed.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from saltmarsh.commands.journal import CommandJournal, Decision

NOT_AFTER_MS = 2_000_000
NOW_MS = 1_000_000
RESULT = {"state": "SUCCEEDED", "detail": {"interval_s": 30}}


def main(argv: list[str]) -> int:
    path, cmd_id, op, idempotent, stop = argv
    journal = CommandJournal.open(Path(path))
    begun = journal.begin(cmd_id, op, idempotent == "1", NOT_AFTER_MS, NOW_MS)
    if begun.decision is not Decision.RUN:
        print(f"expected RUN, got {begun}", file=sys.stderr)
        return 1
    if stop == "result":
        journal.finish(cmd_id, RESULT, NOW_MS + 1)
    print(stop, flush=True)
    time.sleep(600)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
