"""The gateway role's own ops, run by the forwarder on its loop thread.

In: a command addressed to this gateway (`saltmarsh/v1/{site}/{gateway_id}/cmd`), taken from the
uplink by `GatewayCommands`, checked and journalled by a `CommandExecutor` as a device does. Out:
the change it asks for, made to the running forwarder, and its result:
- `set_drain_rate`: the backlog's token bucket gets the new limit at once;
- `flush_backlog_now`: the backlog drains as fast as the windows allow, until it is empty;
- `restart_forwarder`: once its result is spooled, the forwarder stops as on SIGTERM and exits
  `EXIT_RESTART`, for its unit's `Restart=on-failure` to start a new boot.

Both changes last until the forwarder restarts: the pillar's `drain_rate_limit` is the lasting
setting, and a command is the operator's hand on the running one, as `set_interval` is a sensor's.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gateway.sender import Sender
from saltmarsh.commands.executor import Addressee, CommandExecutor, Handler, Report
from saltmarsh.commands.journal import CommandJournal
from saltmarsh.contract.command_state import Scalar
from saltmarsh.contract.ops import GATEWAY

log = logging.getLogger(__name__)

EXIT_RESTART = 75  # EX_TEMPFAIL, as the sensor's: not a success, so Restart=on-failure restarts it


@dataclass
class GatewayOps:
    sender: Sender
    restart: Callable[[], None]  # stop the forwarder, to exit EXIT_RESTART
    restart_requested: bool = False

    def handlers(self) -> dict[str, Handler]:
        return {
            "set_drain_rate": self.set_drain_rate,
            "flush_backlog_now": self.flush_backlog_now,
            "restart_forwarder": self.restart_forwarder,
        }

    def set_drain_rate(self, args: Mapping[str, Scalar], timeout_s: float) -> Mapping[str, Scalar]:
        rate = int(args["messages_per_s"])
        return {"messages_per_s": rate, "was": self.sender.set_drain_rate(rate)}

    def flush_backlog_now(self, args: Mapping[str, Scalar], timeout_s: float) -> Mapping[str, Scalar]:
        return {"backlog_messages": self.sender.flush_backlog()}

    def restart_forwarder(self, args: Mapping[str, Scalar], timeout_s: float) -> Mapping[str, Scalar]:
        # Not now: the journal records the result first, and the forwarder spools it (`spooled`).
        self.restart_requested = True
        return {"restarting": True}

    def spooled(self) -> None:
        """The outcomes of a command run here are in the spool: a commanded restart may go ahead."""
        if self.restart_requested:
            self.restart_requested = False
            log.warning("restarting the forwarder, as commanded", extra={"event": "restart_commanded"})
            self.restart()


def own_executor(
    *,
    site: str,
    gateway_id: str,
    public_keys: list[Ed25519PublicKey],
    journal_path: Path,
    ops: GatewayOps,
    report: Report,
    clock: Callable[[], float] = time.time,
) -> CommandExecutor:
    """The executor of the commands addressed to this gateway, its journal beside the spool."""
    return CommandExecutor(
        Addressee(GATEWAY, site, gateway_id),
        public_keys,
        CommandJournal.open(journal_path),
        handlers=ops.handlers(),
        report=report,
        clock=clock,
    )
