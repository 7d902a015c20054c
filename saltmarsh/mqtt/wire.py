"""A non-blocking MQTT 5 client over one socket: no threads, batched reads and writes.

The caller owns the loop. `publish` and `ack` only append bytes to an out-buffer; `flush`
writes what the socket takes; `poll` waits for the socket, reads everything that is there and
parses it in one go. A caller with several connections selects on their `fileno()`s itself and
calls `poll(0)` on the readable ones, so one thread can own a whole pipeline.

Session state is the caller's: the client remembers only which packet ids await a PUBACK, so
that it never reuses one early. After a reconnect (a new `WireClient`) the caller decides what
to resend; the broker resends what it had not had acknowledged.
"""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
import time

from saltmarsh.contract.errors import ProtocolError, WireError
from saltmarsh.mqtt.codec import (
    CONNACK,
    DISCONNECT,
    DISCONNECT_PACKET,
    MAX_PACKET_ID,
    PINGREQ_PACKET,
    PINGRESP,
    PUBLISH,
    RC_FIRST_FAILURE,
    SUBACK,
    ConnAck,
    Packet,
    Publish,
    decode_connack,
    decode_disconnect,
    decode_suback,
    encode_connect,
    encode_puback,
    encode_publish,
    encode_subscribe,
    parse_stream,
)

__all__ = ["ConnAck", "Publish", "WireClient", "WireError"]

_RECV_BYTES = 256 * 1024
# Bounds one poll's work, so that a busy peer cannot starve the other socket. In bytes, not
# reads: over TLS one read returns one record, and Mosquitto writes each packet as its own record,
# so a bound of 8 reads was 8 PUBACKs a poll, less than a site's own rate.
_MAX_BYTES_PER_POLL = 8 * _RECV_BYTES


CLOSE_LINGER_S = 1.0  # how long a clean `close` waits for the broker to hang up after our DISCONNECT


class WireClient:
    """One MQTT 5 connection; see the module docstring for who does what."""

    def __init__(
        self,
        host: str,
        port: int,
        client_id: str,
        *,
        clean_start: bool,
        keepalive_s: int = 30,
        session_expiry_s: int = 0,
        receive_maximum: int | None = None,
        username: str | None = None,
        password: str | None = None,
        tls_context: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.client_id = client_id
        self._clean_start = clean_start
        self._keepalive_s = keepalive_s
        self._session_expiry_s = session_expiry_s
        self._receive_maximum = receive_maximum
        self._username = username
        self._password = password
        self._tls_context = tls_context
        self._server_hostname = server_hostname or host
        self._sock: socket.socket | None = None
        self._out = bytearray()
        self._in = b""
        # recv_into one buffer for the connection's life: a fresh 256 KiB bytes per recv is
        # above malloc's mmap threshold (saltmarsh.runtime.memory), so every read would map,
        # shrink and unmap memory: about ten syscalls a read at a site's rate.
        self._buf = bytearray(_RECV_BYTES)
        self._view = memoryview(self._buf)
        self._inflight: set[int] = set()
        self._next_id = 1
        self._last_write = 0.0
        self._last_read = 0.0
        self._ping_sent_at: float | None = None
        self._gone: str | None = None  # why the connection ended, once a read saw it end
        # Packets that arrived while connect or subscribe waited for their answer; the next
        # poll returns them, so nothing the broker sent early (a persistent session's backlog)
        # is dropped.
        self._early_publishes: list[Publish] = []
        self._early_pubacks: list[tuple[int, int]] = []

    # -- connection ------------------------------------------------------------------------

    def connect(self, timeout_s: float = 10.0) -> ConnAck:
        """Open the socket, CONNECT, and wait for the CONNACK; refused -> ConnectionRefusedError."""
        deadline = time.monotonic() + timeout_s
        sock = socket.create_connection((self.host, self.port), timeout=timeout_s)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._tls_context is not None:
                sock = self._tls_context.wrap_socket(sock, server_hostname=self._server_hostname)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        self._out.clear()
        self._in = b""
        self._inflight.clear()
        self._ping_sent_at = None
        self._gone = None
        self._early_publishes, self._early_pubacks = [], []
        self._last_write = self._last_read = time.monotonic()
        self._out += encode_connect(
            self.client_id,
            clean_start=self._clean_start,
            keepalive_s=self._keepalive_s,
            session_expiry_s=self._session_expiry_s,
            receive_maximum=self._receive_maximum,
            username=self._username,
            password=self._password,
        )
        try:
            packet = self._await(CONNACK, deadline)
            connack = decode_connack(packet.body)
        except BaseException:
            self.close()
            raise
        if connack.reason >= RC_FIRST_FAILURE:
            self.close()
            raise ConnectionRefusedError(
                f"{self.host}:{self.port} refused the connection: reason 0x{connack.reason:02x}"
            )
        return connack

    def subscribe(self, filters: list[tuple[str, int]], timeout_s: float = 10.0) -> list[int]:
        """Subscribe and wait for the SUBACK: a granted QoS (or failure reason code) per filter.

        Each filter's int is its options byte: the QoS, optionally OR-ed with the codec's
        NO_LOCAL, RETAIN_AS_PUBLISHED, RETAIN_SEND_IF_NEW_SUB or RETAIN_DO_NOT_SEND.
        """
        packet_id = self._allocate_id()
        self._out += encode_subscribe(packet_id, filters)
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                packet = self._await(SUBACK, deadline)
                acked_id, reasons = decode_suback(packet.body)
                if acked_id == packet_id:
                    return reasons
        finally:
            self._inflight.discard(packet_id)

    def close(self, linger_s: float = 0.0) -> None:
        """Send DISCONNECT, wait (at most `linger_s`) for the broker to close its side, then close.

        Safe to call twice. The wait is what makes the last PUBACKs count: a socket closed with
        unread input (messages the broker sent after our last poll) ends in a TCP reset, and the
        broker's kernel then discards whatever the broker had not read yet, acks included, so
        it redelivers what was already committed. Once the broker has closed its side it has
        read everything up to the DISCONNECT. A clean shutdown that acked what it took lingers
        (`CLOSE_LINGER_S`); dropping a link that failed does not wait on it.
        """
        sock = self._sock
        if sock is None:
            return
        self._sock = None
        # Already gone is fine: the broker then treats it as an unclean disconnect.
        with contextlib.suppress(OSError):
            sock.send(DISCONNECT_PACKET)
            if linger_s > 0:
                sock.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + linger_s
            while (remaining := deadline - time.monotonic()) > 0:
                sock.settimeout(remaining)
                if not sock.recv(65_536):
                    break
        sock.close()

    def fileno(self) -> int:
        # Not _require_socket: after an EOF the socket stays open (and readable) until the
        # next poll reports the loss, so a caller's select still includes it.
        if self._sock is None:
            raise ConnectionError(f"{self.host}:{self.port}: not connected")
        return self._sock.fileno()

    @property
    def inflight(self) -> int:
        """QoS 1 messages published and not yet PUBACKed."""
        return len(self._inflight)

    @property
    def pending_out_bytes(self) -> int:
        return len(self._out)

    # -- the hot path ----------------------------------------------------------------------

    def publish(self, topic: bytes, payload: bytes, qos: int = 1, props: bytes = b"\x00") -> int:
        """Buffer a PUBLISH; returns its packet id (0 at QoS 0). `props` is an encoded property block.

        The caller keeps what it publishes within the server's receive maximum (from the
        CONNACK); this only refuses when every packet id is taken.
        """
        packet_id = self._allocate_id() if qos else 0
        self._out += encode_publish(topic, payload, qos, packet_id, props=props)
        return packet_id

    def ack(self, packet_id: int) -> None:
        """Buffer a PUBACK for a received QoS 1 message."""
        self._out += encode_puback(packet_id)

    def flush(self) -> None:
        """Write as much of the out-buffer as the socket takes now, without blocking."""
        out = self._out
        if not out:
            return
        sock = self._require_socket()
        try:
            while out:
                sent = sock.send(out)
                if sent <= 0:
                    break
                del out[:sent]
                self._last_write = time.monotonic()
        except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
            pass
        except OSError as err:
            self._close_socket()
            raise ConnectionError(f"{self.host}:{self.port}: write failed: {err}") from err

    def poll(self, timeout_s: float) -> tuple[list[Publish], list[tuple[int, int]]]:
        """Wait up to `timeout_s` for traffic; returns the PUBLISHes and (packet id, reason) PUBACKs read.

        Also writes pending output when the socket takes it, and keeps the connection alive.
        Raises ConnectionError when the connection is gone (EOF, reset, the server's DISCONNECT,
        or no PINGRESP within the keepalive).
        """
        sock = self._require_socket()
        self._keep_alive()
        if self._early_publishes or self._early_pubacks:
            timeout_s = 0.0
        readable = isinstance(sock, ssl.SSLSocket) and sock.pending() > 0
        if not readable:
            wants_write = [sock] if self._out else []
            try:
                ready_r, ready_w, _ = select.select([sock], wants_write, [], max(0.0, timeout_s))
            except (OSError, ValueError) as err:
                raise ConnectionError(f"{self.host}:{self.port}: {err}") from err
            readable = bool(ready_r)
            if ready_w:
                self.flush()
        publishes, pubacks = self._early_publishes, self._early_pubacks
        self._early_publishes, self._early_pubacks = [], []
        if readable:
            got_publishes, got_pubacks, others = self._read()
            publishes += got_publishes
            pubacks += got_pubacks
            for packet in others:
                self._handle_other(packet)
        if pubacks:
            discard = self._inflight.discard
            for packet_id, _reason in pubacks:
                discard(packet_id)
        return publishes, pubacks

    # -- internals -------------------------------------------------------------------------

    def _require_socket(self) -> socket.socket:
        if self._gone is not None:
            self._close_socket()
            raise ConnectionError(f"{self.host}:{self.port}: {self._gone}")
        if self._sock is None:
            raise ConnectionError(f"{self.host}:{self.port}: not connected")
        return self._sock

    def _allocate_id(self) -> int:
        inflight = self._inflight
        if len(inflight) >= MAX_PACKET_ID:
            raise WireError("all 65535 packet ids are awaiting a PUBACK")
        packet_id = self._next_id
        while packet_id in inflight:
            packet_id = packet_id % MAX_PACKET_ID + 1
        self._next_id = packet_id % MAX_PACKET_ID + 1
        inflight.add(packet_id)
        return packet_id

    def _read(self) -> tuple[list[Publish], list[tuple[int, int]], list[Packet]]:
        sock = self._require_socket()
        chunks = [self._in] if self._in else []
        # One TLS record per recv at most, so a short read there does not mean "drained".
        short_read_drains = not isinstance(sock, ssl.SSLSocket)
        total = 0
        while total < _MAX_BYTES_PER_POLL:
            try:
                size = sock.recv_into(self._buf)
            except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                break
            except OSError as err:
                self._close_socket()
                raise ConnectionError(f"{self.host}:{self.port}: read failed: {err}") from err
            if not size:
                # What arrived before the EOF is returned now; the next poll reports the loss.
                self._gone = "connection closed by the broker"
                break
            chunks.append(self._view[:size].tobytes())
            total += size
            if short_read_drains and size < _RECV_BYTES:
                break
        if total:
            self._last_read = time.monotonic()  # once a poll: the loop over small TLS records is hot
        data = b"".join(chunks) if len(chunks) != 1 else chunks[0]
        publishes, pubacks, others, consumed = parse_stream(data)
        self._in = data[consumed:] if consumed < len(data) else b""
        return publishes, pubacks, others

    def _handle_other(self, packet: Packet) -> None:
        if packet.kind == PINGRESP:
            self._ping_sent_at = None
        elif packet.kind == DISCONNECT:
            reason, text = decode_disconnect(packet.body)
            self._gone = f"broker disconnected: reason 0x{reason:02x} {text}".rstrip()
        elif packet.kind == PUBLISH:
            raise ProtocolError("PUBLISH routed past the parser")  # parse_stream sorts these out
        # SUBACKs outside subscribe() and anything else unexpected: nothing to do.

    def _keep_alive(self) -> None:
        if not self._keepalive_s:
            return
        now = time.monotonic()
        if self._ping_sent_at is not None:
            if now - self._ping_sent_at > self._keepalive_s:
                self._close_socket()
                raise ConnectionError(f"{self.host}:{self.port}: no PINGRESP within {self._keepalive_s} s")
        # Silence either way: a client that publishes all the time still pings once it hears
        # nothing back, or a link cut under a steady flow (whose writes the kernel takes and
        # retransmits for minutes) would never be noticed.
        elif now - min(self._last_write, self._last_read) >= self._keepalive_s * 0.75:
            self._out += PINGREQ_PACKET
            self._ping_sent_at = now
            self.flush()

    def _await(self, kind: int, deadline: float) -> Packet:
        """Block (by polling) until a packet of `kind` arrives; stash what comes before it."""
        sock = self._require_socket()
        while True:
            self.flush()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{self.host}:{self.port}: no answer within the timeout")
            readable = isinstance(sock, ssl.SSLSocket) and sock.pending() > 0
            if not readable:
                ready_r, _, _ = select.select([sock], [sock] if self._out else [], [], remaining)
                readable = bool(ready_r)
            if not readable:
                continue
            publishes, pubacks, others = self._read()
            self._early_publishes += publishes
            self._early_pubacks += pubacks
            for packet in others:
                if packet.kind == kind:
                    # Anything after it in the same read is handled now; nothing is lost.
                    for later in others[others.index(packet) + 1 :]:
                        self._handle_other(later)
                    return packet
                self._handle_other(packet)

    def _close_socket(self) -> None:
        sock = self._sock
        self._sock = None
        if sock is not None:
            sock.close()
