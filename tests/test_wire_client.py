"""WireClient against a real Mosquitto: sessions, batches, refusals, keepalive, TLS, a dying broker."""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from saltmarsh.mqtt.codec import RC_NO_MATCHING_SUBSCRIBERS, RETAIN_SEND_IF_NEW_SUB, Publish, properties, user_property
from saltmarsh.mqtt.wire import CLOSE_LINGER_S, WireClient
from saltmarsh.ops.localfleet.mosquitto import Mosquitto
from tests.conftest import BrokerFactory

_open: list[WireClient] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _open:
        _open.pop().close()


def client(port: int, client_id: str, *, clean_start: bool = True, **kwargs: object) -> WireClient:
    """A connected client, closed when the test ends."""
    wire = WireClient("127.0.0.1", port, client_id, clean_start=clean_start, **kwargs)  # type: ignore[arg-type]
    _open.append(wire)
    wire.connect()
    return wire


def collect(
    wire: WireClient, *, publishes: int = 0, pubacks: int = 0, timeout_s: float = 10.0, ack: bool = False
) -> tuple[list[Publish], list[tuple[int, int]]]:
    """Poll until at least this many PUBLISHes and PUBACKs arrived; `ack` PUBACKs what arrives."""
    got_publishes: list[Publish] = []
    got_pubacks: list[tuple[int, int]] = []
    deadline = time.monotonic() + timeout_s
    while (len(got_publishes) < publishes or len(got_pubacks) < pubacks) and time.monotonic() < deadline:
        wire.flush()
        new_publishes, new_pubacks = wire.poll(0.1)
        if ack:
            for m in new_publishes:
                wire.ack(m.packet_id)
        got_publishes += new_publishes
        got_pubacks += new_pubacks
    return got_publishes, got_pubacks


def test_many_publishes_batch_through_and_are_acked(broker: Mosquitto) -> None:
    sub = client(broker.port, "sub")
    assert sub.subscribe([("t/#", 1)]) == [1]
    pub = client(broker.port, "pub")
    props = properties(user_property("gw", "gw-1"))
    ids = [pub.publish(f"t/{i % 7}".encode(), b"x" * (i % 300), 1, props) for i in range(3000)]
    assert pub.inflight == len(set(ids)) == 3000
    assert pub.pending_out_bytes > 0

    _, pubacks = collect(pub, pubacks=3000)
    assert sorted(pubacks) == sorted((i, 0) for i in ids)
    assert pub.inflight == 0
    # Mosquitto stops at its max_inflight_messages unacked, so this only completes if acks go out.
    received, _ = collect(sub, publishes=3000, ack=True)
    assert [(m.topic, m.payload) for m in received] == [(f"t/{i % 7}", b"x" * (i % 300)) for i in range(3000)]
    assert all(m.qos == 1 and m.packet_id and m.user_properties == (("gw", "gw-1"),) for m in received)
    pub.close()
    sub.close()


def test_no_matching_subscribers_is_reported(broker: Mosquitto) -> None:
    pub = client(broker.port, "pub")
    packet_id = pub.publish(b"nobody/listens", b"x")
    assert pub.publish(b"nobody/listens", b"x", qos=0) == 0
    _, pubacks = collect(pub, pubacks=1)
    assert pubacks == [(packet_id, RC_NO_MATCHING_SUBSCRIBERS)]


def test_connack_reports_session_and_receive_maximum(broker: Mosquitto) -> None:
    first = WireClient("127.0.0.1", broker.port, "keeper", clean_start=False, session_expiry_s=300)
    _open.append(first)
    connack = first.connect()
    assert not connack.session_present
    assert connack.reason == 0
    assert connack.receive_maximum == broker.spec.max_inflight_messages
    first.subscribe([("k/#", 1 | RETAIN_SEND_IF_NEW_SUB)])
    first.close()
    again = WireClient("127.0.0.1", broker.port, "keeper", clean_start=False, session_expiry_s=300)
    _open.append(again)
    assert again.connect().session_present
    again.close()


def test_unacked_messages_come_back_on_the_persistent_session(broker: Mosquitto) -> None:
    """What arrives before subscribe's SUBACK (the session's backlog) is kept for the next poll."""
    sub = client(broker.port, "durable", clean_start=False, session_expiry_s=300, receive_maximum=50)
    sub.subscribe([("d/#", 1)])
    pub = client(broker.port, "pub")
    for i in range(200):
        pub.publish(b"d/x", str(i).encode())
    collect(pub, pubacks=200)
    first, _ = collect(sub, publishes=50, timeout_s=3)
    assert len(first) == 50, "the broker honours our receive maximum"
    for m in first[:20]:
        sub.ack(m.packet_id)
    sub.flush()
    time.sleep(0.2)
    sub.close()

    sub = client(broker.port, "durable", clean_start=False, session_expiry_s=300, receive_maximum=1000)
    sub.subscribe([("d/#", 1)])
    rest, _ = collect(sub, publishes=180)
    assert [m.payload for m in rest] == [str(i).encode() for i in range(20, 200)]
    assert all(m.dup for m in rest[:30])
    sub.close()


def test_dead_broker_raises_connection_error(broker_factory: BrokerFactory) -> None:
    broker = broker_factory("doomed")
    wire = client(broker.port, "victim")
    broker.kill9()
    with pytest.raises(ConnectionError):
        for _ in range(50):
            wire.publish(b"t", b"x")
            wire.flush()
            wire.poll(0.1)
    with pytest.raises(ConnectionError):
        WireClient("127.0.0.1", broker.port, "late", clean_start=True).connect(timeout_s=1)


def test_a_frozen_broker_under_a_steady_flow_is_noticed_within_two_keepalives(broker_factory: BrokerFactory) -> None:
    """Its kernel takes every write, so only the silence tells: the client pings, and no PINGRESP comes."""
    broker = broker_factory("frozen")
    wire = client(broker.port, "steady", keepalive_s=1)
    assert broker.process is not None
    os.kill(broker.process.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        with pytest.raises(ConnectionError, match="no PINGRESP within 1 s"):
            while time.monotonic() - started < 10:
                wire.publish(b"t", b"x")
                wire.flush()
                wire.poll(0.05)
        assert time.monotonic() - started < 3.0  # a ping after 0.75 s of silence, then 1 s for its answer
    finally:
        os.kill(broker.process.pid, signal.SIGCONT)


def test_session_takeover_is_a_connection_error(broker: Mosquitto) -> None:
    first = client(broker.port, "same-id")
    client(broker.port, "same-id")
    # Mosquitto 2.0 closes the socket rather than sending DISCONNECT 0x8E; either must surface.
    with pytest.raises(ConnectionError):
        for _ in range(50):
            first.poll(0.1)


def test_keepalive_pings_an_idle_connection(broker: Mosquitto) -> None:
    wire = client(broker.port, "idle", keepalive_s=1)
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:
        wire.poll(0.2)  # the broker drops a silent client after 1.5 keepalives
    packet_id = wire.publish(b"still/here", b"x")
    assert collect(wire, pubacks=1)[1] == [(packet_id, RC_NO_MATCHING_SUBSCRIBERS)]


def test_credentials_are_checked(broker_factory: BrokerFactory, tmp_path: Path) -> None:
    passwords = tmp_path / "passwd"
    passwords.write_text("")
    subprocess.run(["mosquitto_passwd", "-b", str(passwords), "gw", "s3cret"], check=True, capture_output=True)
    broker = broker_factory(
        "locked", extra_lines=("allow_anonymous false", f"password_file {passwords}", "per_listener_settings false")
    )
    client(broker.port, "ok", username="gw", password="s3cret").close()
    with pytest.raises(ConnectionRefusedError, match=r"0x8[67]"):
        client(broker.port, "bad", username="gw", password="wrong")


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[Path, Path, Path]:
    ca_key, ca_cert = tmp_path / "ca.key", tmp_path / "ca.pem"
    key, csr, cert = tmp_path / "server.key", tmp_path / "server.csr", tmp_path / "server.pem"
    ext = tmp_path / "ext.cnf"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for cmd in (
        f"req -x509 -newkey rsa:2048 -nodes -keyout {ca_key} -out {ca_cert} -days 2 -subj /CN=saltmarsh-test-ca",
        f"req -newkey rsa:2048 -nodes -keyout {key} -out {csr} -subj /CN=localhost",
        f"x509 -req -in {csr} -CA {ca_cert} -CAkey {ca_key} -CAcreateserial -out {cert} -days 2 -extfile {ext}",
    ):
        subprocess.run(["openssl", *cmd.split()], check=True, capture_output=True)
    return ca_cert, cert, key


def test_tls(broker_factory: BrokerFactory, tls_files: tuple[Path, Path, Path]) -> None:
    ca_cert, cert, key = tls_files
    broker = broker_factory("tls", extra_lines=(f"cafile {ca_cert}", f"certfile {cert}", f"keyfile {key}"))
    context = ssl.create_default_context(cafile=str(ca_cert))
    sub = client(broker.port, "tls-sub", tls_context=context)
    sub.subscribe([("s/#", 1)])
    pub = client(broker.port, "tls-pub", tls_context=context, server_hostname="localhost")
    for i in range(2000):
        pub.publish(b"s/t", i.to_bytes(4, "big") * 100)
    _, pubacks = collect(pub, pubacks=2000)
    assert len(pubacks) == 2000
    received, _ = collect(sub, publishes=2000, ack=True)
    assert [int.from_bytes(m.payload[:4], "big") for m in received] == list(range(2000))

    with pytest.raises(ssl.SSLCertVerificationError):
        client(broker.port, "untrusting", tls_context=ssl.create_default_context())


def test_one_poll_reads_every_small_tls_record_that_is_waiting(
    broker_factory: BrokerFactory, tls_files: tuple[Path, Path, Path]
) -> None:
    """Mosquitto writes each packet as its own TLS record, and a TLS recv returns one record. A
    poll that stopped after a few records read a few PUBACKs a poll: a forwarder reading its
    uplink once a cycle fell behind its own acks after an outage, and stayed 40 s behind (the lab
    saw it as commands held 45 s late)."""
    ca_cert, cert, key = tls_files
    broker = broker_factory("tls-records", extra_lines=(f"cafile {ca_cert}", f"certfile {cert}", f"keyfile {key}"))
    pub = client(broker.port, "records", tls_context=ssl.create_default_context(cafile=str(ca_cert)))
    ids = [pub.publish(b"r/t", b"x") for _ in range(2000)]
    while pub.pending_out_bytes:
        pub.flush()
    time.sleep(1.0)  # every PUBACK is in our socket's buffer now
    _, pubacks = pub.poll(0)
    assert sorted(packet_id for packet_id, _ in pubacks) == sorted(ids)


def test_a_clean_close_keeps_the_last_acks_even_with_unread_input(broker: Mosquitto) -> None:
    """Closing with messages still unread resets the connection, and Mosquitto then drops the
    PUBACKs it had not read yet: measured, 1,343 acked messages came back over 10 runs of this.
    A clean close lingers until the broker hangs up, so none may come back."""
    for trial in range(3):
        topic = f"linger/{trial}"
        sub = client(broker.port, f"sub-{trial}", session_expiry_s=600, receive_maximum=2000)
        sub.subscribe([(f"{topic}/#", 1)])
        pub = client(broker.port, f"pub-{trial}")
        for i in range(4000):
            pub.publish(f"{topic}/x".encode(), str(i).encode().ljust(200))
        acked: set[int] = set()
        deadline = time.monotonic() + 10
        while len(acked) < 1500 and time.monotonic() < deadline:
            pub.flush()
            pub.poll(0)
            for message in sub.poll(0.05)[0]:
                sub.ack(message.packet_id)
                acked.add(int(message.payload))
            sub.flush()
        assert len(acked) >= 1500
        sub.close(linger_s=CLOSE_LINGER_S)  # with input unread: the broker is still sending

        again = client(broker.port, f"sub-{trial}", clean_start=False, session_expiry_s=600, receive_maximum=2000)
        redelivered, _ = collect(again, publishes=4000 - len(acked), timeout_s=10, ack=True)
        assert {int(m.payload) for m in redelivered} == set(range(4000)) - acked
