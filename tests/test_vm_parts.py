"""The power-cut VM's pure parts: module load order, the initramfs archive, the console's lines,
and the audit of what each sensor boot committed. The VM itself runs in `make powercut`."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from bench.scenarios.powercut import committed, highest_stored, missing
from saltmarsh.ops.vm.console import DiskSample, StatusLine, VmEvent, parse_diskstats, parse_line, read_boot
from saltmarsh.ops.vm.kernel import load_order, module_depends, newc_archive
from saltmarsh.ops.vm.machine import GuestFwd, MachineSpec
from saltmarsh.ops.vm.site import GuestSite

DEPENDS = {
    "ext4": ["jbd2", "mbcache", "crc16"],
    "jbd2": [],
    "mbcache": [],
    "crc16": [],
    "virtio_blk": ["virtio", "virtio_ring"],
    "virtio": ["virtio_ring"],
    "virtio_ring": [],
    "loop_a": ["loop_b"],
    "loop_b": ["loop_a"],
}

LOAD_ORDER_CASES = {
    "leaf": (["crc16"], ["crc16"]),
    "deps first": (["ext4"], ["jbd2", "mbcache", "crc16", "ext4"]),
    "shared dep once": (["virtio_blk", "virtio"], ["virtio_ring", "virtio", "virtio_blk"]),
    "a cycle ends": (["loop_a"], ["loop_b", "loop_a"]),
}


@pytest.mark.parametrize("case", sorted(LOAD_ORDER_CASES))
def test_load_order(case: str) -> None:
    wanted, expected = LOAD_ORDER_CASES[case]
    assert load_order(wanted, DEPENDS.__getitem__) == expected


MODINFO_CASES = {
    "several": (b"\x00license=GPL\x00depends=jbd2,mbcache,crc16\x00name=ext4\x00", ["jbd2", "mbcache", "crc16"]),
    "none": (b"\x00depends=\x00name=crc16\x00", []),
    "dash spelling": (b"\x00depends=crc32c-generic\x00", ["crc32c_generic"]),
    "no field": (b"\x00name=x\x00", []),
}


@pytest.mark.parametrize("case", sorted(MODINFO_CASES))
def test_module_depends(case: str) -> None:
    blob, expected = MODINFO_CASES[case]
    assert module_depends(blob) == expected


@pytest.mark.skipif(shutil.which("cpio") is None, reason="cpio (apt) lists the archive")
def test_newc_archive_is_read_by_cpio(tmp_path: Path) -> None:
    archive = newc_archive({"bin": (0o040755, b""), "bin/tool": (0o100755, b"#!/bin/sh\n"), "init": (0o100755, b"x")})
    listed = subprocess.run(["cpio", "-t", "--quiet"], input=archive, capture_output=True, check=True).stdout.split()
    assert listed == [b"bin", b"bin/tool", b"init"]
    subprocess.run(["cpio", "-id", "--quiet"], input=archive, cwd=tmp_path, check=True)
    assert (tmp_path / "bin" / "tool").read_bytes() == b"#!/bin/sh\n"
    assert (tmp_path / "init").stat().st_mode & 0o111


DISK_LINE = " 254 16 vdb 3 0 24 1 10 2 4096 5 0 0 1 0 0 0 0 0 0; 254 32 vdc 3 0 24 1 7 0 8 1 0 0 1 0 0 0 0 0 0;"

CONSOLE_CASES: dict[str, tuple[str, object]] = {
    "event": ("@vm services 5.79", VmEvent("services", 5.79)),
    "event with words": ("@vm fatal no-data-disk 5.44", VmEvent("fatal no-data-disk", 5.44)),
    "disk": (f"@disk 12.5 {DISK_LINE}", DiskSample(12.5, {"vdb": 4096 * 512, "vdc": 8 * 512})),
    "status": (
        '@status {"service": "sensor", "instance": "s1", "counters": {"last_seq": 7, "boot": "b1"}}',
        StatusLine("sensor", "s1", {"last_seq": 7, "boot": "b1"}),
    ),
    "status cut mid-line by the power": ('@status {"service": "sensor", "inst', None),
    "kernel message": ("[    7.75] reboot: Power down", None),
    "event without uptime": ("@vm services", None),
}


@pytest.mark.parametrize("case", sorted(CONSOLE_CASES))
def test_console_line(case: str) -> None:
    line, expected = CONSOLE_CASES[case]
    assert parse_line(line) == expected


def test_diskstats_skips_short_lines() -> None:
    assert parse_diskstats("254 16 vdb 3;;" + DISK_LINE) == {"vdb": 4096 * 512, "vdc": 8 * 512}


def _status(device: str, boot: str, seq: int) -> str:
    return (
        f'@status {{"service": "sensor", "instance": "{device}", "counters": {{"boot": "{boot}", "last_seq": {seq}}}}}'
    )


def test_boot_record_keeps_the_last_of_each() -> None:
    record = read_boot(
        ["@vm init 1.0", _status("s1", "b1", 3), f"@disk 2.0 {DISK_LINE}", _status("s1", "b1", 9), "@vm services 3.0"]
    )
    assert [e.name for e in record.events] == ["init", "services"]
    assert record.status("sensor", "s1") == {"boot": "b1", "last_seq": 9}
    assert record.last_disk is not None and record.last_disk.written_bytes["vdb"] == 4096 * 512


def test_committed_takes_each_boots_highest() -> None:
    first = read_boot([_status("s1", "b1", 5), _status("s2", "c1", 4)])
    second = read_boot([_status("s1", "b2", 2), _status("s1", "b2", 0)])
    assert committed([first, second]) == {("s1", "b1"): 5, ("s2", "c1"): 4, ("s1", "b2"): 2}


MISSING_CASES = {
    "all stored": ({("s1", "b1"): 5}, [("s1", "b1", n) for n in range(1, 6)], {}),
    "stored beyond the last print": ({("s1", "b1"): 5}, [("s1", "b1", n) for n in range(1, 8)], {}),
    "short by two": ({("s1", "b1"): 5}, [("s1", "b1", n) for n in range(1, 4)], {("s1", "b1"): 2}),
    "a boot with nothing": ({("s1", "b2"): 3}, [("s1", "b1", 1)], {("s1", "b2"): 3}),
}


@pytest.mark.parametrize("case", sorted(MISSING_CASES))
def test_missing(case: str) -> None:
    expected, keys, short = MISSING_CASES[case]
    assert missing(expected, highest_stored(keys)) == short


def test_machine_reaches_only_its_forwards() -> None:
    spec = MachineSpec(Path("k"), Path("i"), Path("r"), [Path("d1"), Path("d2")], [GuestFwd(11883, 40001)])
    argv = spec.argv(Path("c.log"), Path("s.log"))
    netdev = argv[argv.index("-netdev") + 1]
    assert netdev == "user,id=n0,restrict=on,guestfwd=tcp:10.0.2.100:11883-cmd:socat - TCP:127.0.0.1:40001"
    assert argv[argv.index("-accel") + 1] == "tcg"
    drives = [argv[i + 1] for i, a in enumerate(argv) if a == "-drive"]
    assert drives == [
        "file=r,format=raw,if=virtio,readonly=on",
        "file=d1,format=raw,if=virtio",
        "file=d2,format=raw,if=virtio",
    ]


def _site_files(site: GuestSite) -> dict[str, str]:
    return {name: content.decode() for name, content in site.gateway_files().items()}


SITE_CASES: dict[str, tuple[GuestSite, set[str], dict[str, list[str]]]] = {
    "gateway": (
        GuestSite(site="s"),
        {"etc/mosquitto.conf", "etc/forwarder.toml", "etc/sensor-vm-s01.toml", "etc/sensor-vm-s02.toml"},
        {"etc/forwarder.toml": ['host = "10.0.2.100"', "port = 11883"], "etc/sensor-vm-s01.toml": ["port = 1884"]},
    ),
    "sensor only": (
        GuestSite.sensor_only("s"),
        {"etc/sensor-vm-s01.toml"},
        {"etc/sensor-vm-s01.toml": ['host = "10.0.2.100"', "port = 11884"]},
    ),
    "bridged peer": (
        GuestSite.bridged("s", {"extra_lines": ("connection cloud", "address 10.0.2.100:11883")}),
        {"etc/mosquitto.conf", "etc/sensor-vm-s01.toml", "etc/sensor-vm-s02.toml"},
        {"etc/mosquitto.conf": ["address 10.0.2.100:11883"], "etc/sensor-vm-s01.toml": ['mode = "broker"']},
    ),
}


@pytest.mark.parametrize("case", sorted(SITE_CASES))
def test_guest_site_files(case: str) -> None:
    site, configs, holds = SITE_CASES[case]
    files = _site_files(site)
    assert {name for name in files if name.endswith((".conf", ".toml"))} == configs
    for name, needles in holds.items():
        for needle in needles:
            assert needle in files[name], f"{name} lacks {needle!r}"
    assert "user root" in files.get("etc/mosquitto.conf", "user root")
