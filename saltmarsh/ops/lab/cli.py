"""`saltmarsh lab up | status | down | chaos | salt`: the verbs, thin over `Lab` and `ChaosRun`."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from saltmarsh.contract.errors import SaltmarshError
from saltmarsh.ops.lab.state import DEFAULT_DIR, SINKS
from saltmarsh.runtime.status import ServiceStatus

# The lab needs PyYAML and Salt (the `salt` extra); a sensor's `saltmarsh status` must work
# without them, so the lab's modules are imported only when a lab verb runs.
if TYPE_CHECKING:
    from saltmarsh.ops.lab.fleet import Fleet
    from saltmarsh.ops.lab.lab import Lab
    from saltmarsh.ops.lab.plan import Plan

PLANS_DIR = Path(__file__).resolve().parent / "plans"
# The counters `lab status` shows for each kind of service, in this order.
SHOWN = {
    "sensor": ("connected", "last_seq", "spool_depth", "unconfirmed", "publish_rate"),
    "forwarder": ("uplink_connected", "spool_depth", "unconfirmed", "oldest_unsent_age_s", "evicted_total"),
    "ingester": ("connected", "written_total", "duplicates_total", "dead_letters_total", "write_failures_total"),
}


def _say(text: str) -> None:
    print(text, flush=True)


def _fleet(args: argparse.Namespace) -> Fleet:
    from saltmarsh.ops.lab.fleet import generated_fleet, load_fleet

    if args.sites is None and args.sensors_per_site is None:
        return load_fleet()
    return generated_fleet(args.sites or 1, args.sensors_per_site or 2)


def describe(lab: Lab) -> str:
    """What `lab up` built: nodes, addresses, roles and the services Salt started."""
    rows = [("node", "roles", "site", "addresses", "services")]
    for node in lab.fleet.nodes:
        addresses = ", ".join(str(a) for a in (node.uplink, node.lan) if a is not None)
        units = ", ".join(u.removesuffix(".service") for u in lab.units(node.id)) or "-"
        rows.append((node.id, ",".join(node.roles), node.site or "-", addresses, units))
    return _table(rows)


def _table(rows: Sequence[tuple[str, ...]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows
    )


def cmd_up(args: argparse.Namespace) -> int:
    from saltmarsh.ops.lab.lab import Lab

    lab = Lab.up(
        Path(args.dir), _fleet(args), say=_say, sensor_interval_s=args.sensor_interval, swarm=args.swarm, sink=args.sink
    )
    print(describe(lab))
    print(f"\nstate: {lab.state.path}\nnext: saltmarsh lab status --watch | saltmarsh lab salt -- '*' test.ping")
    return 0


def _counter(status: ServiceStatus, key: str) -> str:
    value = status.counters.get(key)
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


def status_text(lab: Lab) -> str:
    """One row per unit: its main pid, and the counters of the service status that pid writes."""
    now_ms = int(time.time() * 1000)
    rows: list[tuple[str, ...]] = [("node", "unit", "pid", "state", "counters")]
    statuses = lab.all_statuses()
    for row in lab.services():
        status = next((s for s in statuses.get(row.node, []) if row.pid is not None and s.pid == row.pid), None)
        if status is None:
            rows.append(
                (row.node, row.unit.removesuffix(".service"), str(row.pid or "-"), "running" if row.pid else "DEAD", "")
            )
            continue
        counters = " ".join(f"{k}={_counter(status, k)}" for k in SHOWN.get(status.service, ()))
        rows.append((row.node, row.unit.removesuffix(".service"), str(row.pid), status.state(now_ms), counters))
    return _table(rows)


def _attach(args: argparse.Namespace) -> Lab:
    from saltmarsh.ops.lab.lab import Lab

    return Lab.attach(Path(args.dir))


def cmd_status(args: argparse.Namespace) -> int:
    lab = _attach(args)
    while True:
        text = status_text(lab)
        if args.watch:
            print("\033[2J\033[H" + time.strftime("%H:%M:%S ") + f"lab under {lab.base}\n" + text, flush=True)
            time.sleep(args.interval)
            continue
        print(text)
        dead = [row for row in lab.services() if row.pid is None]
        return 1 if dead else 0


def cmd_down(args: argparse.Namespace) -> int:
    from saltmarsh.ops.lab.lab import down

    report = down(Path(args.dir), keep_files=args.keep_files, say=_say)
    for failure in report.failures:
        print(f"saltmarsh lab down: {failure}", file=sys.stderr)
    return 1 if report.failures else 0


def find_plan(name: str) -> Plan:
    from saltmarsh.ops.lab.plan import load_plan

    path = Path(name)
    if not path.exists():
        for suffix in (".yaml", ".yml", ".toml"):
            if (PLANS_DIR / f"{name}{suffix}").exists():
                path = PLANS_DIR / f"{name}{suffix}"
                break
        else:
            known = ", ".join(sorted(p.stem for p in PLANS_DIR.glob("*.y*ml")))
            raise SaltmarshError(f"no plan file {name!r}, and no plan of that name in the repo ({known})")
    return load_plan(path)


def cmd_chaos(args: argparse.Namespace) -> int:
    from saltmarsh.ops.lab.chaos import ChaosRun, format_chaos_report

    lab = _attach(args)
    plan = find_plan(args.plan)
    if args.scale != 1.0:
        plan = plan.scaled(args.scale)
    report = ChaosRun(lab, plan, _say).run()
    print(format_chaos_report(report))
    return 0 if report.ok else 1


def cmd_salt(args: argparse.Namespace) -> int:
    lab = _attach(args)
    salt_args = [a for a in args.salt_args if a != "--"] if args.salt_args[:1] == ["--"] else list(args.salt_args)
    argv = lab.master.argv("salt", salt_args)
    # The user's terminal, straight through: output, exit code and Ctrl-C are salt's own.
    return subprocess.run(argv, check=False).returncode


def add_lab_parser(verbs: argparse._SubParsersAction[argparse.ArgumentParser], count: Callable[[str], Any]) -> None:
    lab = verbs.add_parser("lab", help="a whole fleet in network namespaces, provisioned by real Salt (root)")
    lab_verbs = lab.add_subparsers(dest="lab_verb", required=True)
    default_dir = os.environ.get("SALTMARSH_LAB_DIR", str(DEFAULT_DIR))

    up = lab_verbs.add_parser("up", help="build the fleet: namespaces, salt-master, minions, state.apply by role")
    up.add_argument("--sites", type=count, help="generate this many sites (default: salt/fleet.yaml as it is)")
    up.add_argument("--sensors-per-site", type=count, help="sensors at each generated site (default 2)")
    up.add_argument("--sensor-interval", type=float, default=1.0, help="seconds between readings (default 1)")
    up.add_argument(
        "--swarm", type=int, default=0, metavar="N", help="each sensor node runs N simulated devices (default: one)"
    )
    up.add_argument(
        "--sink",
        choices=SINKS,
        default="sqlite",
        help="the ingester's store of record: sqlite (default), or elasticsearch (the emulator in the cloud node)",
    )
    up.add_argument("--dir", default=default_dir, help=f"the lab's files and state (default {default_dir})")
    up.set_defaults(func=cmd_up)

    status = lab_verbs.add_parser("status", help="every node's units and counters")
    status.add_argument("--watch", action="store_true", help="refresh until Ctrl-C")
    status.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes (default 2)")
    status.add_argument("--dir", default=default_dir)
    status.set_defaults(func=cmd_status)

    down_parser = lab_verbs.add_parser("down", help="remove every namespace, mount and process the lab made")
    down_parser.add_argument("--keep-files", action="store_true", help="keep the nodes' files and logs")
    down_parser.add_argument("--dir", default=default_dir)
    down_parser.set_defaults(func=cmd_down)

    chaos = lab_verbs.add_parser("chaos", help="run a plan of timed faults, then audit the sink")
    chaos.add_argument("plan", help=f"a YAML or TOML plan file, or a plan's name in {PLANS_DIR}")
    chaos.add_argument("--scale", type=float, default=1.0, help="multiply every time in the plan (default 1)")
    chaos.add_argument("--dir", default=default_dir)
    chaos.set_defaults(func=cmd_chaos)

    salt = lab_verbs.add_parser("salt", help="run salt on the lab's master: saltmarsh lab salt -- ARGS")
    salt.add_argument("--dir", default=default_dir)
    salt.add_argument("salt_args", nargs=argparse.REMAINDER, help="salt's own arguments, after --")
    salt.set_defaults(func=cmd_salt)
