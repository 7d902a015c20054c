"""A bare MQTT 5 connection for the bench's hot loops: the codec's handshake, then raw bytes.

The load generator and the counter must cost a few microseconds a message, so that on this
2-core machine the broker they surround is the only real cost. They cannot afford an object
per message, so they build and scan packets in bulk themselves (see `loadgen` and `counter`);
this module only connects and subscribes, with the codec's encoders and decoders, and hands
over a non-blocking socket plus the bytes that arrived after the handshake (a persistent
session's backlog may start right behind the CONNACK).

No keepalive is asked for: the link is on loopback and the bench watches its own processes,
so nothing has to be written while idle and a broker's death shows as EOF or a reset.
"""

from __future__ import annotations

import select
import socket
import time
from dataclasses import dataclass

from saltmarsh.contract.errors import ProtocolError, WireError
from saltmarsh.mqtt.codec import (
    CONNACK,
    RC_FIRST_FAILURE,
    SUBACK,
    decode_connack,
    decode_suback,
    encode_connect,
    encode_subscribe,
    read_varint,
)

RECV_BYTES = 1 << 20
_SUBSCRIBE_ID = 1


@dataclass(slots=True)
class Link:
    sock: socket.socket
    receive_maximum: int  # the broker's: at most this many QoS 1 PUBLISHes unacknowledged
    session_present: bool
    early: bytes  # what arrived after the handshake's answers: the start of the traffic

    def close(self) -> None:
        """Close without a DISCONNECT, so the broker treats it as a dropped connection."""
        self.sock.close()


def next_packet(data: bytes, pos: int) -> tuple[int, int, int] | None:
    """(packet type, body start, packet end) of the packet at `pos`, or None while incomplete."""
    if len(data) - pos < 2:
        return None
    try:
        length, start = read_varint(data, pos + 1)
    except IndexError:
        return None
    if start + length > len(data):
        return None
    return data[pos] >> 4, start, start + length


def open_link(
    host: str,
    port: int,
    client_id: str,
    *,
    clean_start: bool,
    session_expiry_s: int = 0,
    receive_maximum: int | None = None,
    subscribe: str | None = None,
    timeout_s: float = 10.0,
) -> Link:
    """Connect (and subscribe to one filter at QoS 1); raises OSError, TimeoutError or WireError."""
    deadline = time.monotonic() + timeout_s
    sock = socket.create_connection((host, port), timeout=timeout_s)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        sock.sendall(
            encode_connect(
                client_id,
                clean_start=clean_start,
                keepalive_s=0,
                session_expiry_s=session_expiry_s,
                receive_maximum=receive_maximum,
            )
        )
        body, rest = _await(sock, CONNACK, b"", deadline, f"{host}:{port}")
        connack = decode_connack(body)
        if connack.reason >= RC_FIRST_FAILURE:
            raise ConnectionRefusedError(f"{host}:{port} refused the connection: reason 0x{connack.reason:02x}")
        if subscribe is not None:
            _send_all(sock, encode_subscribe(_SUBSCRIBE_ID, [(subscribe, 1)]), deadline)
            body, rest = _await(sock, SUBACK, rest, deadline, f"{host}:{port}")
            packet_id, granted = decode_suback(body)
            if packet_id != _SUBSCRIBE_ID or not granted or granted[0] >= RC_FIRST_FAILURE:
                raise WireError(f"{host}:{port} refused the subscription to {subscribe!r}: {granted}")
    except BaseException:
        sock.close()
        raise
    return Link(sock, connack.receive_maximum, connack.session_present, rest)


def _send_all(sock: socket.socket, data: bytes, deadline: float) -> None:
    view = memoryview(data)
    while view:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("could not write the handshake in time")
        select.select([], [sock], [], remaining)
        try:
            view = view[sock.send(view) :]
        except BlockingIOError:
            continue


def _await(sock: socket.socket, kind: int, data: bytes, deadline: float, peer: str) -> tuple[bytes, bytes]:
    """Read until a packet of `kind` arrives: (its body, every other byte read, in order).

    Only a session's PUBLISHes can come before a SUBACK, and nothing before a CONNACK; the
    bytes around the answer are kept for the hot loop, which parses them as traffic.
    """
    while True:
        pos = 0
        while (found := next_packet(data, pos)) is not None:
            packet_kind, start, stop = found
            if packet_kind == kind:
                return data[start:stop], data[:pos] + data[stop:]
            if kind == CONNACK:
                raise ProtocolError(f"{peer}: packet type {packet_kind} before the CONNACK")
            pos = stop
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"{peer}: no answer within the timeout")
        ready, _, _ = select.select([sock], [], [], remaining)
        if not ready:
            continue
        try:
            chunk = sock.recv(RECV_BYTES)
        except BlockingIOError:
            continue
        if not chunk:
            raise ConnectionError(f"{peer}: connection closed during the handshake")
        data += chunk


def send_some(sock: socket.socket, out: bytearray) -> None:
    """Write what the socket takes now from the front of `out`, without blocking."""
    try:
        while out:
            sent = sock.send(out)
            if sent <= 0:
                return
            del out[:sent]
    except BlockingIOError:
        return


def recv_all(sock: socket.socket, chunks: list[bytes], max_recvs: int = 8) -> bool:
    """Append what the socket holds now to `chunks` (at most `max_recvs` reads); False at EOF."""
    for _ in range(max_recvs):
        try:
            chunk = sock.recv(RECV_BYTES)
        except BlockingIOError:
            return True
        if not chunk:
            return False
        chunks.append(chunk)
        if len(chunk) < RECV_BYTES:
            return True
    return True
