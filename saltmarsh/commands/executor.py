"""A command's last hop: from the MQTT message a device received to the outcomes it reports.

In: a `cmd` message (topic, payload, the retain flag, and the remaining time the gateway handed
over, if any). Out: the outcomes to report, each of which the device mints as a `cmdres`
envelope and spools like a reading (`report`); counters for `saltmarsh status`.

The order of the checks is the security model. Nothing is reported for a message that is not a
command this device may trust: retained, unparsable, badly signed, or addressed to another
device. Those are counted and logged, and nothing more, since a report about a forged `cmd_id`
would let a forger overwrite the real command's state. A genuine command then gets exactly one
of: EXPIRED(hop=device), REJECTED naming the field, the journal's recorded result (a duplicate
delivery), or one run: RUNNING, then SUCCEEDED or FAILED. The journal writes the intent before
the op runs and the result after it, so no crash can make a non-idempotent op run twice.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from saltmarsh.commands.journal import CommandJournal, Decision
from saltmarsh.commands.trust import DEFAULT_LIMITS, Refused, count_refusal, trusted_command
from saltmarsh.contract.command import Command
from saltmarsh.contract.command_state import CommandOutcome, CommandState, Hop, Scalar
from saltmarsh.contract.envelope import Limits
from saltmarsh.contract.errors import ValidationError
from saltmarsh.contract.ops import OpSpec, validate_op

log = logging.getLogger(__name__)

MAX_REASON = 200


class OpFailed(Exception):
    """An op's own failure, reported as FAILED with this reason (a bug in the op is one too)."""


# An op's body: its validated args and the time it may take, in; what it reports, out.
Handler = Callable[[Mapping[str, Scalar], float], Mapping[str, Scalar]]
Report = Callable[[CommandOutcome], None]


@dataclass(frozen=True, slots=True)
class Addressee:
    """Who runs commands here: one device of one site, with the role whose ops it knows."""

    role: str
    site: str
    device: str


@dataclass
class ExecutorCounters:
    received_total: int = 0
    retained_total: int = 0  # refused: a retained command would run again at every reconnect
    invalid_total: int = 0  # not a command at all
    forged_total: int = 0  # bad signature, or another key's
    misaddressed_total: int = 0
    expired_total: int = 0
    rejected_total: int = 0
    duplicates_total: int = 0
    succeeded_total: int = 0
    failed_total: int = 0


def _outcome_from_result(cmd: Command, result: Mapping[str, object]) -> CommandOutcome:
    """A journal's recorded result back to the outcome it was: the same answer to every duplicate."""
    state = CommandState(str(result.get("state", "failed")).lower())
    reason = result.get("reason")
    values = result.get("result")
    return CommandOutcome(
        cmd.cmd_id,
        cmd.rollout,
        state,
        reason=None if reason is None else str(reason),
        result=dict(values) if isinstance(values, Mapping) else {},
    )


def _result_of(outcome: CommandOutcome) -> dict[str, object]:
    out: dict[str, object] = {"state": outcome.state.value}
    if outcome.reason is not None:
        out["reason"] = outcome.reason
    if outcome.result:
        out["result"] = dict(outcome.result)
    return out


class CommandExecutor:
    def __init__(
        self,
        addressee: Addressee,
        public_keys: Sequence[Ed25519PublicKey],
        journal: CommandJournal,
        *,
        handlers: Mapping[str, Handler],
        report: Report,
        limits: Limits = DEFAULT_LIMITS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.addressee = addressee
        self.public_keys = list(public_keys)
        self.journal = journal
        self.handlers = dict(handlers)
        self.report = report
        self.limits = limits
        self.clock = clock
        self.counters = ExecutorCounters()
        self._lock = threading.Lock()  # one command at a time: ops change the agent they run in

    def handle(self, topic: str, payload: bytes, *, retained: bool = False, remaining_ms: int | None = None) -> None:
        """Check one received message and, if it is a command for us, answer it (see the module)."""
        with self._lock:
            self.counters.received_total += 1
            cmd = self._trusted(topic, payload, retained)
            if cmd is not None:
                self._answer(cmd, remaining_ms)

    def _trusted(self, topic: str, payload: bytes, retained: bool) -> Command | None:
        try:
            return trusted_command(
                topic,
                payload,
                retained=retained,
                public_keys=self.public_keys,
                site=self.addressee.site,
                device=self.addressee.device,
                limits=self.limits,
            )
        except Refused as refused:
            count_refusal(self.counters, refused, topic, log)
            return None

    def _deadline_ms(self, cmd: Command, now_ms: int, remaining_ms: int | None) -> int:
        # The gateway's count of the time left beats a device's own clock, which on a Pi without
        # a real-time clock may be hours off until NTP answers; the deadline is then taken from it.
        return cmd.not_after_ms if remaining_ms is None else now_ms + remaining_ms

    def _answer(self, cmd: Command, remaining_ms: int | None) -> None:
        now_ms = int(self.clock() * 1000)
        deadline_ms = self._deadline_ms(cmd, now_ms, remaining_ms)
        if now_ms >= deadline_ms:
            self.counters.expired_total += 1
            log.info("command expired", extra={"event": "command_expired", "cmd_id": cmd.cmd_id, "op": cmd.op})
            self.report(CommandOutcome(cmd.cmd_id, cmd.rollout, CommandState.EXPIRED, hop=Hop.DEVICE))
            return
        try:
            spec, args = validate_op(self.addressee.role, cmd.op, cmd.args)
            handler = self.handlers[spec.name]
        except ValidationError as err:
            self._reject(cmd, f"{err.field}: {err.detail}")
            return
        except KeyError:
            self._reject(cmd, f"op: {cmd.op!r} is not run by this {self.addressee.role}")
            return
        begin = self.journal.begin(cmd.cmd_id, spec.name, spec.idempotent, max(deadline_ms, cmd.not_after_ms), now_ms)
        if begin.decision is Decision.RUNNING:
            self.counters.duplicates_total += 1
            return  # the first copy is still running here; its result is on the way
        if begin.decision is Decision.CACHED:
            assert begin.result is not None
            self.counters.duplicates_total += 1
            log.info("command already run", extra={"event": "command_duplicate", "cmd_id": cmd.cmd_id})
            self.report(_outcome_from_result(cmd, begin.result))
            return
        self.report(CommandOutcome(cmd.cmd_id, cmd.rollout, CommandState.RUNNING))
        outcome = self._run(cmd, spec, handler, args)
        # What the journal holds is what every later duplicate gets, so report that, not ours.
        stored = self.journal.finish(cmd.cmd_id, _result_of(outcome), int(self.clock() * 1000))
        final = _outcome_from_result(cmd, stored)
        if final.state is CommandState.SUCCEEDED:
            self.counters.succeeded_total += 1
        else:
            self.counters.failed_total += 1
        self.report(final)

    def _reject(self, cmd: Command, why: str) -> None:
        self.counters.rejected_total += 1
        log.warning("command rejected: %s", why, extra={"event": "command_rejected", "cmd_id": cmd.cmd_id})
        self.report(CommandOutcome(cmd.cmd_id, cmd.rollout, CommandState.REJECTED, reason=why[:MAX_REASON]))

    def _run(self, cmd: Command, spec: OpSpec, handler: Handler, args: Mapping[str, Scalar]) -> CommandOutcome:
        started = time.monotonic()
        try:
            result = handler(args, cmd.run_timeout_s)
            outcome = CommandOutcome(cmd.cmd_id, cmd.rollout, CommandState.SUCCEEDED, result=dict(result))
        except OpFailed as err:
            outcome = CommandOutcome(cmd.cmd_id, cmd.rollout, CommandState.FAILED, reason=str(err)[:MAX_REASON])
        except Exception as err:
            # An op's bug must not take the agent down: it is this command's failure, recorded.
            log.exception("op failed", extra={"event": "op_crashed", "cmd_id": cmd.cmd_id, "op": spec.name})
            outcome = CommandOutcome(
                cmd.cmd_id, cmd.rollout, CommandState.FAILED, reason=f"{type(err).__name__}: {err}"[:MAX_REASON]
            )
        log.info(
            "command run",
            extra={
                "event": "command_run",
                "cmd_id": cmd.cmd_id,
                "op": spec.name,
                "state": outcome.state.value,
                "took_s": round(time.monotonic() - started, 3),
            },
        )
        return outcome

    def status_counters(self) -> dict[str, int]:
        journal = {f"journal_{k}": v for k, v in self.journal.counters().items()}
        return {f"commands_{k}": v for k, v in vars(self.counters).items()} | journal
