"""Real Mosquitto brokers as child processes, with a config written for each one's role.

A `BrokerPair` is a site's gateway broker and its cloud broker. Used by `saltmarsh demo`, the
tests and the benches. Production configs are rendered by Salt; the settings that matter for not
losing messages are the same in both and explained here.
"""

from __future__ import annotations

import getpass
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from saltmarsh.contract.errors import SaltmarshError
from saltmarsh.ops.localfleet.processes import ServiceProcess, free_port, wait_for_port

MOSQUITTO_CANDIDATES = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")


def mosquitto_binary() -> str:
    found = shutil.which("mosquitto") or next((p for p in MOSQUITTO_CANDIDATES if Path(p).exists()), None)
    if found is None:
        raise SaltmarshError("mosquitto is not installed: run `make demo` or `apt-get install mosquitto`")
    return found


@dataclass(frozen=True, slots=True)
class BrokerSpec:
    name: str
    port: int
    data_dir: Path
    # The defaults are what saltmarsh needs from any broker on the path: queues that do not
    # silently drop (Mosquitto's default max_queued_messages is 1000), persistence so that a
    # graceful restart keeps the ingesters' and forwarder's sessions, and a window wide enough
    # for group commit to batch.
    max_queued_messages: int = 10_000_000
    max_inflight_messages: int = 1000
    persistence: bool = True
    autosave_interval_s: int = 60
    max_packet_size: int = 16_384 + 1024  # as the formula renders it: max_message_bytes + 1024
    extra_lines: tuple[str, ...] = ()
    # Started as root, Mosquitto would drop to the `mosquitto` user and then fail, silently, to
    # write our persistence and log paths: it runs as whoever starts it (a guest's root, in a VM).
    user: str = field(default_factory=getpass.getuser)

    def render(self) -> str:
        lines = [
            f"# saltmarsh {self.name} broker (generated)",
            f"listener {self.port} 127.0.0.1",
            "allow_anonymous true",
            f"user {self.user}",
            f"max_queued_messages {self.max_queued_messages}",
            f"max_inflight_messages {self.max_inflight_messages}",
            f"max_packet_size {self.max_packet_size}",
            "set_tcp_nodelay true",
            "log_dest stdout",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "connection_messages true",
        ]
        if self.persistence:
            lines += [
                "persistence true",
                f"persistence_location {self.data_dir}/",
                f"autosave_interval {self.autosave_interval_s}",
            ]
        lines += list(self.extra_lines)
        return "\n".join(lines) + "\n"


def bridge_lines(name: str, remote_port: int, topic: str, remote_host: str = "127.0.0.1") -> tuple[str, ...]:
    """A Mosquitto native bridge to another broker, QoS 1 outbound, every other option its default.

    For the benches, which compare the forwarder with the bridge; pass as `extra_lines` (last,
    because every line after `connection` configures that bridge).
    """
    return (f"connection {name}", f"address {remote_host}:{remote_port}", f"topic {topic} out 1")


class Mosquitto:
    """Start, stop, kill -9 and restart one broker on the same port and data dir."""

    def __init__(self, spec: BrokerSpec, log_dir: Path) -> None:
        self.spec = spec
        self.log_dir = log_dir
        self.conf_path = spec.data_dir / f"{spec.name}.conf"
        self.process: ServiceProcess | None = None

    @classmethod
    def on_free_port(cls, name: str, base_dir: Path, **spec_args: object) -> Mosquitto:
        data_dir = base_dir / name
        spec = BrokerSpec(name=name, port=free_port(), data_dir=data_dir, **spec_args)  # type: ignore[arg-type]
        return cls(spec, base_dir / "logs")

    @property
    def port(self) -> int:
        return self.spec.port

    def start(self, timeout_s: float = 10.0) -> Mosquitto:
        self.spec.data_dir.mkdir(parents=True, exist_ok=True)
        self.conf_path.write_text(self.spec.render())
        self.process = ServiceProcess(
            f"mosquitto-{self.spec.name}",
            [mosquitto_binary(), "-c", str(self.conf_path)],
            self.log_dir / f"mosquitto-{self.spec.name}.log",
        ).start()
        if not wait_for_port(self.spec.port, timeout_s):
            tail = self.process.log_tail()
            self.process.stop()
            raise SaltmarshError(f"mosquitto {self.spec.name} did not listen on {self.spec.port}:\n{tail}")
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    def kill9(self) -> None:
        if self.process is not None:
            self.process.kill9()

    def alive(self) -> bool:
        return self.process is not None and self.process.alive()


@dataclass(frozen=True, slots=True)
class BrokerPair:
    """A site's gateway broker and the cloud broker its forwarder sends up to."""

    gateway: Mosquitto
    cloud: Mosquitto

    @classmethod
    def on_free_ports(cls, brokers_dir: Path) -> BrokerPair:
        return cls(Mosquitto.on_free_port("gateway", brokers_dir), Mosquitto.on_free_port("cloud", brokers_dir))

    def start(self) -> BrokerPair:
        self.cloud.start()
        self.gateway.start()
        return self

    def stop(self) -> None:
        self.gateway.stop()
        self.cloud.stop()
