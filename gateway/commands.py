"""Commands on their way down through a gateway: from the cloud broker, held, to the site's devices.

In (on the forwarder's loop thread, which owns both links):
- `take`: `cmd` PUBLISHes from the cloud broker (the uplink's persistent session, QoS 1);
- `observe`: what the site broker carries back: each device's retained presence (`status`)
  and each command outcome (`cmdres`) on its way up;
- `due` and `sweep`, on the clock.
Out:
- the packet ids to acknowledge to the cloud broker: a command is acknowledged only once it is
  in the `CommandStore` (or refused), so the cloud broker lets go of it only then;
- deliveries to publish on the site broker, each with the time left (`remaining_ms`), to its
  device when that device is not known to be offline, again every `redeliver_s` (or the op's
  run timeout, if longer) until a final outcome comes back, and at once when it comes online;
- the gateway's own outcomes, minted as `cmdres` envelopes on its own (device, boot, seq):
  AT_GATEWAY, EXPIRED(hop=gateway), CANCELED(superseded), each naming its `target`. They are
  spooled like the devices' messages; a command they end is released only once that is done.

The checks are the device's own, done here as well so that nothing forged or stale takes room
in the hold: the signature (the gateway trusts the same keys), the site, the deadline, and the
retain flag. Nothing is reported for what fails them; they are counted and logged.
A broadcast (`_all`) is delivered on the site's broadcast topic and held until its deadline:
no single answer ends it, and each device answers for itself.
A command addressed to the gateway itself is not held: its own executor (`serve_own`, with the
ops of `gateway.ops`) journals and runs it here, and its outcomes join the gateway's own.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gateway.command_store import RUNNING, SUPERSEDED, CommandStore, Held
from saltmarsh.commands.executor import CommandExecutor
from saltmarsh.commands.trust import Refused, count_refusal, trusted_command
from saltmarsh.contract.command import REMAINING_PROPERTY
from saltmarsh.contract.command_state import CommandOutcome, CommandState, Hop
from saltmarsh.contract.envelope import parse
from saltmarsh.contract.errors import JournalError, SpoolError, ValidationError
from saltmarsh.contract.mint import mint_cmdres
from saltmarsh.contract.topics import BROADCAST, Channel
from saltmarsh.mqtt.codec import properties, user_property
from saltmarsh.mqtt.wire import Publish

log = logging.getLogger(__name__)

PROP_MESSAGE_EXPIRY = 0x02
_CMD_SUFFIX = "/" + Channel.COMMAND.value
_STATUS_SUFFIX = "/" + Channel.STATUS.value
_CMDRES_SUFFIX = "/" + Channel.CMDRES.value


def is_command(publish: Publish) -> bool:
    return publish.topic.endswith(_CMD_SUFFIX)


def delivery_properties(remaining_ms: int) -> bytes:
    """The PUBLISH properties of a delivery: the time left in ms (the device's clock may be
    wrong), and MQTT 5 message expiry in whole seconds, so the site broker drops it in time too."""
    expiry_s = max(1, -(-remaining_ms // 1000))
    return properties(
        bytes((PROP_MESSAGE_EXPIRY,)) + expiry_s.to_bytes(4, "big"),
        user_property(REMAINING_PROPERTY, str(remaining_ms)),
    )


@dataclass
class CommandCounters:
    received_total: int = 0
    redelivered_from_cloud_total: int = 0
    retained_total: int = 0
    invalid_total: int = 0
    forged_total: int = 0
    misaddressed_total: int = 0
    expired_total: int = 0
    superseded_total: int = 0
    delivered_total: int = 0  # publishes to the site broker, first and again
    done_total: int = 0  # released on a final outcome from the device
    store_failures_total: int = 0
    errors_total: int = 0  # a bug in this relay, logged: the forwarder's data path goes on


@dataclass(frozen=True, slots=True)
class Delivery:
    topic: bytes
    payload: bytes
    props: bytes
    cmd_id: str


@dataclass
class Outbox:
    """The gateway's own outcomes, minted, waiting to be spooled; `then` runs once they are."""

    records: list[tuple[str, bytes]] = field(default_factory=list)
    then: list[Callable[[], None]] = field(default_factory=list)


class GatewayCommands:
    def __init__(
        self,
        *,
        gateway_id: str,
        site: str,
        boot: str,
        store: CommandStore,
        public_keys: Sequence[Ed25519PublicKey],
        redeliver_s: float = 30.0,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.gateway_id = gateway_id
        self.site = site
        self.boot = boot
        self.store = store
        self.public_keys = list(public_keys)
        self.redeliver_s = redeliver_s
        self.clock = clock
        self.monotonic = monotonic
        self.counters = CommandCounters()
        self.last_seq = 0
        self.online: dict[str, bool] = {}  # device -> its last retained presence; absent: unknown
        self._next_at: dict[str, float] = {}  # cmd_id -> when to deliver it (again)
        self._releasing: set[str] = set()  # an outcome ending it is minted, not yet spooled
        self.outbox = Outbox()
        self._own: CommandExecutor | None = None
        self._after_own: Callable[[], None] = lambda: None
        self._recover()

    def serve_own(self, executor: CommandExecutor, spooled: Callable[[], None]) -> None:
        """Run the commands addressed to this gateway with `executor` (whose report is `report`);
        `spooled` is called once the outcomes of each are in the spool."""
        self._own = executor
        self._after_own = spooled

    def _recover(self) -> None:
        """After a restart: what was held is delivered again, and what was superseded reported again."""
        now = self.monotonic()
        for held in self.store.all():
            if held.status == SUPERSEDED:
                self._end(held, CommandState.CANCELED, reason="superseded")
            else:
                self._next_at[held.cmd_id] = now

    # -- from the cloud ---------------------------------------------------------------------

    def take(self, publishes: Sequence[Publish]) -> list[int]:
        """Commands from the cloud broker: checked and held. Returns the packet ids to PUBACK;
        one that could not be stored is not among them, so the cloud broker delivers it again."""
        acks: list[int] = []
        for publish in publishes:
            if self._take_one(publish) and publish.packet_id:
                acks.append(publish.packet_id)
        return acks

    def _take_one(self, publish: Publish) -> bool:
        topic = publish.topic
        try:
            cmd = trusted_command(
                topic, publish.payload, retained=publish.retain, public_keys=self.public_keys, site=self.site
            )
        except Refused as refused:
            count_refusal(self.counters, refused, topic, log)
            return True  # acked: the cloud broker must not hand it over for ever
        now_ms = int(self.clock() * 1000)
        if now_ms >= cmd.not_after_ms:
            self.counters.expired_total += 1
            self.report(
                CommandOutcome(cmd.cmd_id, cmd.rollout, CommandState.EXPIRED, hop=Hop.GATEWAY, target=cmd.device)
            )
            return True
        if cmd.device == self.gateway_id and self._own is not None:
            return self._run_own(publish)
        try:
            new, superseded = self.store.hold(cmd, publish.payload, now_ms)
        except SpoolError as err:
            self.counters.store_failures_total += 1
            log.error("command not held", extra={"event": "command_store_failed", "why": str(err)})
            return False
        self.counters.received_total += 1
        if not new:
            self.counters.redelivered_from_cloud_total += 1
            return True
        log.info(
            "command held",
            extra={"event": "command_held", "cmd_id": cmd.cmd_id, "device": cmd.device, "op": cmd.op},
        )
        self.report(CommandOutcome(cmd.cmd_id, cmd.rollout, CommandState.AT_GATEWAY, target=cmd.device))
        for old in superseded:
            self.counters.superseded_total += 1
            self._end(old, CommandState.CANCELED, reason="superseded")
        if not any(old.cmd_id == cmd.cmd_id for old in superseded):
            self._next_at[cmd.cmd_id] = self.monotonic()
        return True

    def _run_own(self, publish: Publish) -> bool:
        assert self._own is not None
        try:
            self._own.handle(publish.topic, publish.payload, retained=publish.retain)
        except JournalError as err:
            # Not acked: the cloud broker delivers it again, and the journal decides then.
            self.counters.store_failures_total += 1
            log.error("own command not journalled", extra={"event": "command_journal_failed", "why": str(err)})
            return False
        self.counters.received_total += 1
        self.outbox.then.append(self._after_own)
        return True

    # -- from the site ----------------------------------------------------------------------

    def observe(self, publish: Publish) -> None:
        """A status or cmdres message the site broker carried (the forwarder sees them all)."""
        topic = publish.topic
        if topic.endswith(_STATUS_SUFFIX):
            self._presence(topic, publish.payload)
        elif topic.endswith(_CMDRES_SUFFIX):
            self._outcome(topic, publish.payload)

    def _presence(self, topic: str, payload: bytes) -> None:
        device = topic.split("/")[3] if topic.count("/") == 4 else ""
        try:
            state = json.loads(payload).get("state") if payload else "offline"
        except (ValueError, AttributeError):
            return
        online = state == "online"
        was = self.online.get(device)
        self.online[device] = online
        if online and was is not True:
            # It is (back) up: whatever it has been waiting for, now.
            now = self.monotonic()
            for held in self.store.all():
                if held.device in (device, BROADCAST) and held.status != SUPERSEDED:
                    self._next_at[held.cmd_id] = now

    def _outcome(self, topic: str, payload: bytes) -> None:
        try:
            env = parse(topic, payload, int(self.clock() * 1000))
        except ValidationError:
            return  # the ingester dead-letters it, with its reason
        outcome = env.cmd
        if outcome is None:
            return
        held = self.store.get(outcome.cmd_id)
        if held is None or held.device == BROADCAST:
            return
        try:
            if outcome.state.final:
                self.counters.done_total += self.store.release([outcome.cmd_id])
                self._next_at.pop(outcome.cmd_id, None)
            elif outcome.state is CommandState.RUNNING and held.status != RUNNING:
                self.store.mark_running(outcome.cmd_id)
        except SpoolError as err:
            self.counters.store_failures_total += 1
            log.error("command store not updated", extra={"event": "command_store_failed", "why": str(err)})

    # -- on the clock -----------------------------------------------------------------------

    def due(self) -> list[Delivery]:
        """What to publish on the site broker now; each is due again after `redeliver_s`."""
        now = self.monotonic()
        if not any(at <= now for at in self._next_at.values()):
            return []
        now_ms = int(self.clock() * 1000)
        out: list[Delivery] = []
        for held in self.store.all():
            at = self._next_at.get(held.cmd_id)
            if at is None or at > now or held.status == SUPERSEDED or held.cmd_id in self._releasing:
                continue
            remaining_ms = held.not_after_ms - now_ms
            if remaining_ms <= 0:
                continue  # the sweep reports it
            if held.device != BROADCAST and self.online.get(held.device) is False:
                self._next_at[held.cmd_id] = now + self.redeliver_s  # its presence says when
                continue
            self._next_at[held.cmd_id] = now + max(self.redeliver_s, held.run_timeout_s)
            self.counters.delivered_total += 1
            out.append(Delivery(held.topic.encode(), held.payload, delivery_properties(remaining_ms), held.cmd_id))
        return out

    def sweep(self) -> None:
        """Report EXPIRED(hop=gateway) for what passed its deadline here; released once spooled."""
        for held in self.store.expired(int(self.clock() * 1000)):
            if held.cmd_id in self._releasing or held.status == SUPERSEDED:
                continue
            self.counters.expired_total += 1
            log.info("command expired at the gateway", extra={"event": "command_expired", "cmd_id": held.cmd_id})
            if held.device == BROADCAST:
                self._end(held, None)  # each device answered for itself, or did not: nothing to say
            else:
                self._end(held, CommandState.EXPIRED, hop=Hop.GATEWAY)

    # -- the gateway's own outcomes ---------------------------------------------------------

    def _end(
        self, held: Held, state: CommandState | None, *, hop: Hop | None = None, reason: str | None = None
    ) -> None:
        """Report `state` for `held` and let go of it once that report is spooled."""
        self._releasing.add(held.cmd_id)
        self._next_at.pop(held.cmd_id, None)
        if state is not None:
            self.report(CommandOutcome(held.cmd_id, held.rollout, state, hop=hop, reason=reason, target=held.device))

        def release(cmd_id: str = held.cmd_id) -> None:
            try:
                self.store.release([cmd_id])
            except SpoolError as err:
                self.counters.store_failures_total += 1
                log.error("command not released", extra={"event": "command_store_failed", "why": str(err)})
            self._releasing.discard(cmd_id)

        self.outbox.then.append(release)

    def report(self, outcome: CommandOutcome) -> None:
        """One of the gateway's own outcomes (its executor's, or the relay's), minted on its sequence."""
        self.last_seq += 1
        env = mint_cmdres(
            device=self.gateway_id,
            site=self.site,
            boot=self.boot,
            seq=self.last_seq,
            ts_ms=int(self.clock() * 1000),
            outcome=outcome,
        )
        self.outbox.records.append((str(env.topic), env.encode()))

    def take_outbox(self) -> Outbox | None:
        """The outcomes minted since the last call, or None (the loop asks at every step)."""
        outbox = self.outbox
        if not outbox.records and not outbox.then:
            return None
        self.outbox = Outbox()
        return outbox

    def close(self) -> None:
        self.store.close()
        if self._own is not None:
            self._own.journal.close()

    def status_counters(self) -> dict[str, int]:
        counters = {f"commands_{k}": v for k, v in vars(self.counters).items()}
        if self._own is not None:
            counters |= {f"own_{k}": v for k, v in self._own.status_counters().items()}
        counters["commands_held"] = self.store.depth()
        counters["commands_last_seq"] = self.last_seq
        return counters
