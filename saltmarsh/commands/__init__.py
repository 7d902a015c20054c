"""The machinery of commands shared by devices and the master.

Today: the device's journal (`journal`), later the executor and the rollout store.

In: a command's id, op and deadline as the agent is about to act on it, and the op's result once
it has acted. Out: whether to run it now or answer with the result already recorded, so that a
command runs at most once at the device whatever the broker, the gateway or a kill -9 repeats;
and counters for `saltmarsh status`.
"""

from saltmarsh.commands.journal import (
    DEFAULT_PRUNE_MARGIN_MS,
    INTERRUPTED_RESULT,
    Begin,
    CommandJournal,
    Decision,
    JournalEntry,
)

__all__ = [
    "DEFAULT_PRUNE_MARGIN_MS",
    "INTERRUPTED_RESULT",
    "Begin",
    "CommandJournal",
    "Decision",
    "JournalEntry",
]
