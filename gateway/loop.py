"""The forwarder's loop thread: selects on both links and carries each hand-off between the parts.

In:  the parts, built and wired by `service.run`: the site link (`source.LocalSource`), the
     `committer.GroupCommitter`, the uplink (`sender.Sender`) and one `connector.Connector` per
     link.
Out: every step, in this order:
     - site broker -> source: PUBLISHes filed into the batch being gathered;
     - source -> committer: the gathered batch, when it is its turn (`gather_deadline`);
     - committer -> source: PUBACKs to the site broker for each batch now on disk;
     - committer -> sender: the new segments, records still in memory (the live path);
     - uplink -> sender: PUBACKs counted; then the sender publishes what is due;
     - sender -> committer: the delivered segments, deleted in the next commit;
     - with commands (`commands.GatewayCommands`): uplink `cmd` -> held, then PUBACKed; held ->
       site broker, to each device; the gateway's own outcomes -> the batch being gathered.

One thread owns both connections, so there are no locks on the per-message path; the other
threads (committer, connectors) only `wake` it.

At a site's rate the loop does not wake for every packet: it reads both links once per cycle,
so that one wake-up, one commit, one batch of PUBACKs and one uplink write cover all of the
cycle's messages, and only the committer (a batch is on disk: send it up) wakes it in between.
A cycle lasts as long as about CYCLE_MESSAGES take to arrive, `cycle_ms` at the most. Past a
commit's worth in a cycle, or while the sender has a backlog or resends to push, it reads as
data comes, as fast as it can.
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from gateway.commands import GatewayCommands, is_command
from gateway.committer import GroupCommitter
from gateway.connector import LINK_ERRORS, Connector
from gateway.sender import Sender
from gateway.source import LocalSource
from saltmarsh.mqtt.wire import CLOSE_LINGER_S, ConnAck, Publish, WireClient

_MAX_SELECT_S = 0.25  # how late a stop request or a keepalive may be noticed
_KEEPALIVE_POLL_S = 1.0
QUIET_S = 0.02  # no new local data for this long: the site broker has sent what it will
IDLE_CYCLE_S = 1.0  # an idle forwarder looks at its links this often (the first message waits)
CYCLE_MESSAGES = 500  # what a quiet cycle aims to gather: half the site broker's inflight cap
MIN_CYCLE_S = 0.02

log = logging.getLogger(__name__)


def gather_deadline(
    *, online: bool, size: int, first_at: float, last_local_data: float, offline_gather_s: float, now: float
) -> float:
    """When the gathered batch must go to the committer, if nothing else sends it sooner.

    Online (uplink up, unconfirmed window open), one batch waits for the committer at most:
    while it writes, the next one grows, so a busy forwarder commits big batches and an idle
    one commits at once. Offline nothing is waiting for the data, so batches grow into big
    segments: spool memory is per segment, and an outage at 1,000 msg/s in 5 ms commits would
    be 150,000 segments per million messages.
    The batch goes when it is full, half a second old (`offline_commit_interval_ms`), or when
    the site broker goes quiet, which is also what its inflight limit looks like once we hold
    that many unacked.
    """
    if online or not size:
        return now
    return min(first_at + offline_gather_s, last_local_data + QUIET_S)


def cycle_length(messages: int, elapsed_s: float, cycle_s: float, *, idle: bool) -> float:
    """How long the next quiet cycle lasts: as long as about CYCLE_MESSAGES take to arrive at the
    rate of the last one (`messages` in `elapsed_s`), `cycle_s` at the most.

    Short enough that the site broker always has room to send them: it sends a session at most
    its max_inflight_messages (1,000 in the formula) unacked, and a cycle that reached that cap
    would hold the forwarder at the cap's rate. After a cycle that brought nothing, with nothing
    on its way up, a long one. With `cycle_s` 0 there are no quiet cycles, only keepalive polls.
    """
    if not cycle_s:
        return _KEEPALIVE_POLL_S
    if idle:
        return max(cycle_s, IDLE_CYCLE_S)
    rate = messages / elapsed_s if elapsed_s > 0 else 0.0
    return min(cycle_s, max(MIN_CYCLE_S, CYCLE_MESSAGES / rate)) if rate > 0 else cycle_s


class Waker:
    """Interrupts the loop's select from any thread; wake-ups coalesce until the loop has seen one."""

    def __init__(self) -> None:
        self.socket, self._send = socket.socketpair()
        self.socket.setblocking(False)
        self._send.setblocking(False)
        self._woken = False

    def wake(self) -> None:
        if not self._woken:
            self._woken = True
            # A full socket is already full of wake-ups.
            with contextlib.suppress(BlockingIOError):
                self._send.send(b"\x01")

    def drain(self) -> None:
        """The loop has woken: the next `wake` sends again (loop thread)."""
        self._woken = False
        try:
            while self.socket.recv(4096):
                pass
        except BlockingIOError:
            pass

    def close(self) -> None:
        self.socket.close()
        self._send.close()


class ForwarderLoop:
    """Both connections, the committer's results, the sender's pump; see the module docstring."""

    def __init__(
        self,
        *,
        waker: Waker,
        source: LocalSource,
        committer: GroupCommitter,
        sender: Sender,
        local_link: Connector[WireClient],
        uplink_link: Connector[tuple[WireClient, ConnAck]],
        commit_max_messages: int,
        offline_gather_s: float,
        cycle_s: float = 0.0,
        commands: GatewayCommands | None = None,
    ) -> None:
        self._waker = waker
        self.commands = commands
        if commands is not None:
            source.observer = commands.observe
        self._wake_socket = waker.socket
        self.source = source
        self.committer = committer
        self.sender = sender
        self._local_link = local_link
        self._uplink_link = uplink_link
        self._commit_max_messages = commit_max_messages
        self._offline_gather_s = offline_gather_s
        self._last_poll = {"local": 0.0, "uplink": 0.0}
        self._last_local_data = 0.0
        self._last_tick = 0.0
        self._cycle_s = cycle_s
        # Messages per cycle: the site broker may send twice that unacked (source.local_client),
        # so a quiet cycle's messages all wait in the socket, none in the broker.
        self._quiet_below = max(1, commit_max_messages)
        self._next_cycle = 0.0
        self._cycle_started = 0.0
        self._cycle_messages = 0
        self._quiet = cycle_s > 0

    def run(self, stop_event: threading.Event, grace_s: float = 2.0) -> bool:
        """Forward until `stop_event` is set (True) or the committer has died (False)."""
        self.committer.start()
        self._local_link.start()
        self._uplink_link.start()
        try:
            while not stop_event.is_set():
                now = time.monotonic()
                timeout_s = self.sender.idle_wait(now)
                if len(self.source.gathering) and not self.sender.can_send:
                    timeout_s = min(timeout_s, self._gather_deadline(now) - now)
                self._step(timeout_s)
                if not self.committer.alive():
                    log.critical("the committer died; exiting to be restarted", extra={"event": "forwarder_crashed"})
                    return False
        finally:
            self._shut_down(grace_s)
        return True

    def _shut_down(self, grace_s: float) -> None:
        # Order matters: no more acks, then everything received is spooled, then the uplink
        # gets a moment for in-flight PUBACKs, then the deletes are committed.
        self._local_link.stop()
        self._uplink_link.stop()
        self.source.detach("stopping", CLOSE_LINGER_S)
        batch = self.source.cut()
        if batch is not None:
            self.committer.submit(batch)
        self.sender.stopping = True
        deadline = time.monotonic() + grace_s
        # Confirmations, too: each one spares the sink a duplicate after the restart.
        while (
            (self.sender.inflight or self.sender.unconfirmed.count)
            and self.sender.connected
            and time.monotonic() < deadline
        ):
            self._step(0.05)
        self.committer.remove(self.sender.take_delivered())
        self.sender.release_all()
        self.committer.stop()

    def _step(self, timeout_s: float) -> None:
        local = self.source.client
        uplink = self.sender.client
        wake_socket = self._wake_socket
        readers: list[Any] = [wake_socket]
        writers: list[Any] = []
        now = time.monotonic()
        quiet = self._quiet and self.sender.idle and timeout_s > 0
        cap_s = _MAX_SELECT_S
        if quiet:
            # Only the committer wakes us before the cycle ends; the links wait in their sockets.
            timeout_s = cap_s = min(timeout_s, self._next_cycle - now)
        for client in (local, uplink):
            if client is not None:
                if client.pending_out_bytes:
                    writers.append(client)
                if not quiet:
                    readers.append(client)
        try:
            readable, _, _ = select.select(readers, writers, [], max(0.0, min(timeout_s, cap_s)))
        except (OSError, ValueError):
            # A connection closed under us (its fileno raised or went stale): poll both now,
            # and the one that is gone reports itself.
            readable = [c for c in (local, uplink) if c is not None]
        now = time.monotonic()
        if now >= self._next_cycle:
            self._end_cycle(now)
            if quiet:
                readable = [*readable, *(c for c in (local, uplink) if c is not None)]
        if wake_socket in readable:
            self._waker.drain()
        if local is not None and (local in readable or now - self._last_poll["local"] > _KEEPALIVE_POLL_S):
            self._read_local(local, now)
        self._collect_commits(now)
        self.source.confirm(now)
        if uplink is not None and (uplink in readable or now - self._last_poll["uplink"] > _KEEPALIVE_POLL_S):
            self._read_uplink(uplink, now)
        self.sender.pump(now)
        delivered = self.sender.take_delivered()
        if delivered:
            self.committer.remove(delivered)
        if self.commands is not None:
            self._guarded("relay", self._relay_commands)
        self._flush()
        self._follow_links()

    def _end_cycle(self, now: float) -> None:
        """Quiet for the next cycle if this one brought less than a commit's worth; see `cycle_length`."""
        messages, elapsed = self._cycle_messages, now - self._cycle_started
        self._quiet = self._cycle_s > 0 and messages < self._quiet_below
        self._cycle_messages = 0
        self._cycle_started = now
        idle = not messages and not self.sender.inflight and not self.sender.unconfirmed.count
        self._next_cycle = now + cycle_length(messages, elapsed, self._cycle_s, idle=idle)

    def _read_local(self, local: WireClient, now: float) -> None:
        self._last_poll["local"] = now
        try:
            publishes, _ = local.poll(0)
        except LINK_ERRORS as err:
            self._local_down(repr(err))
            return
        if publishes:
            self._last_local_data = now
            self._cycle_messages += len(publishes)
            # One read may hold more than the receive maximum we asked for (Mosquitto sends past
            # it once acks come back in bulk): cut it so that no batch, and no segment, outgrows
            # commit_max_messages.
            step = self._commit_max_messages
            for start in range(0, len(publishes), step):
                self.source.take(publishes[start : start + step], now)
                self._submit_if_due(now)
        self._submit_if_due(now)

    def _collect_commits(self, now: float) -> None:
        done = self.committer.done
        while done:
            committed = done.popleft()
            self.source.ack(committed.batch)
            if committed.segments:
                self.sender.offer(committed.segments)
        self._submit_if_due(now)

    def _submit_if_due(self, now: float) -> None:
        """Hand the gathered batch to the committer when it is its turn; see `gather_deadline`."""
        size = len(self.source.gathering)
        if not size or (self.committer.queued and size < self._commit_max_messages):
            return
        online = self.sender.can_send
        if online or size >= self._commit_max_messages or now >= self._gather_deadline(now):
            batch = self.source.cut()
            if batch is not None:
                # A quiet cycle's batch is all there is: no point waiting for more.
                self.committer.submit(batch, gather=not self._quiet)

    def _gather_deadline(self, now: float) -> float:
        gathering = self.source.gathering
        return gather_deadline(
            online=self.sender.can_send,
            size=len(gathering),
            first_at=gathering.first_at,
            last_local_data=self._last_local_data,
            offline_gather_s=self._offline_gather_s,
            now=now,
        )

    def _read_uplink(self, uplink: WireClient, now: float) -> None:
        self._last_poll["uplink"] = now
        try:
            confirmations, pubacks = uplink.poll(0)
        except LINK_ERRORS as err:
            self._uplink_down(repr(err))
            return
        if pubacks:
            self.sender.settle(pubacks, now)
        if confirmations and self.commands is not None:
            commands = [p for p in confirmations if is_command(p)]
            if commands:
                confirmations = [p for p in confirmations if not is_command(p)]
                self._guarded("take", lambda: self._take_commands(uplink, commands))
        if confirmations:
            self.sender.confirm(confirmations, now)
        if now - self._last_tick >= 1.0:
            self._last_tick = now
            self.sender.tick()
            if self.commands is not None:
                self._guarded("sweep", self.commands.sweep)

    def _guarded(self, what: str, step: Callable[[], object]) -> None:
        """A command step that fails is logged and counted; the readings go on being forwarded."""
        try:
            step()
        except Exception:
            assert self.commands is not None
            self.commands.counters.errors_total += 1
            log.exception("command %s failed", what, extra={"event": "command_step_failed", "step": what})

    def _take_commands(self, uplink: WireClient, publishes: list[Publish]) -> None:
        assert self.commands is not None
        for packet_id in self.commands.take(publishes):
            uplink.ack(packet_id)

    def _relay_commands(self) -> None:
        """Held commands down to the site broker, and the gateway's own outcomes into the spool."""
        commands = self.commands
        assert commands is not None
        local = self.source.client
        if local is not None:
            for delivery in commands.due():
                local.publish(delivery.topic, delivery.payload, 1, delivery.props)
        outbox = commands.take_outbox()
        if outbox is not None:
            self.source.add_own(outbox.records, outbox.then)
            self._submit_if_due(time.monotonic())

    def _flush(self) -> None:
        local = self.source.client
        if local is not None and local.pending_out_bytes:
            try:
                local.flush()
            except LINK_ERRORS as err:
                self._local_down(repr(err))
        uplink = self.sender.client
        if uplink is not None and uplink.pending_out_bytes:
            try:
                uplink.flush()
            except LINK_ERRORS as err:
                self._uplink_down(repr(err))

    def _local_down(self, why: str) -> None:
        self.source.detach(why)
        self._local_link.start()

    def _uplink_down(self, why: str) -> None:
        self.sender.detach(why)
        self._uplink_link.last_failure_ms = int(time.time() * 1000)
        self._uplink_link.start()

    def _follow_links(self) -> None:
        local = self._local_link.take()
        if local is not None:
            self.source.attach(local)
            self._last_poll["local"] = 0.0
        uplink = self._uplink_link.take()
        if uplink is not None:
            client, connack = uplink
            self.sender.attach(client, connack, self._uplink_link.last_failure_ms)
            self._last_poll["uplink"] = 0.0
