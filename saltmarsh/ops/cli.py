"""The `saltmarsh` command: demo, audit, status, es-templates, pillar new-site and add-ble-device, lab, cmd,
anomaly score.

Every verb exits
    0  done, and all is well
    1  it checked and found something wrong (audit: losses or duplicates; status: no service has
       written status; demo: the audit failed, or a service it started died), or the action
       itself failed (es-templates)
    2  it could not check: bad arguments, or a file or directory that is missing, unreadable or
       not what it should be (the message names it)
"""

from __future__ import annotations

import argparse
import json
import math
import sqlite3
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from saltmarsh.config.ingester import SinkConfig, load_ingester_config
from saltmarsh.contract.errors import SaltmarshError, SinkUnavailable
from saltmarsh.ops.anomaly_cli import register as add_anomaly_parser
from saltmarsh.ops.audit import AuditReport, expectations_from, format_report, format_whereabouts, run_audit
from saltmarsh.ops.cmd_cli import add_cmd_parser
from saltmarsh.ops.lab.cli import add_lab_parser
from saltmarsh.ops.localfleet.fleet import FleetPlan, LocalFleet
from saltmarsh.ops.progress import fleet_progress_line
from saltmarsh.runtime.status import ServiceStatus, read_status_dir
from saltmarsh.sinks import open_audit_source

DEFAULT_STATUS_DIR = Path("/run/saltmarsh/status")


def _audit(source_spec: Path | SinkConfig, expectations: dict[str, tuple[str, int]] | None) -> AuditReport:
    if isinstance(source_spec, Path) and not source_spec.is_file():
        raise SinkUnavailable(f"sqlite {source_spec}: {'not a file' if source_spec.exists() else 'no such file'}")
    source = open_audit_source(source_spec)
    try:
        return run_audit(source.stored_keys(), expectations, source.dead_letter_counts())
    except sqlite3.Error as err:
        # An empty file, another program's database or an older schema: nothing to audit.
        raise SinkUnavailable(f"sqlite {source_spec}: not a saltmarsh sink database: {err}") from None
    except (ValueError, TypeError) as err:
        # Keys out of order or of the wrong type: the store is not one this audit can read.
        raise SinkUnavailable(f"{source_spec}: cannot audit its stored keys: {err}") from None
    finally:
        source.close()


def _read_status_dir(directory: Path, verb: str) -> list[ServiceStatus] | None:
    """Every service status in `directory`, naming on stderr each file skipped; None if it is no directory."""
    if not directory.is_dir():
        what = "is not a directory" if directory.exists() else "does not exist"
        print(f"saltmarsh {verb}: status directory {directory} {what}", file=sys.stderr)
        return None
    statuses, skipped = read_status_dir(directory)
    for path in skipped:  # damaged, or not a service's
        print(f"saltmarsh {verb}: skipped {path}: not a readable service status", file=sys.stderr)
    return statuses


def cmd_demo(args: argparse.Namespace) -> int:
    plan = FleetPlan(
        base_dir=Path(args.dir),
        sensors=args.sensors,
        rate_hz=args.rate,
        readings_per_sensor=max(1, int(args.rate * args.duration)),
        drain_rate_limit=args.drain_rate,
        es_url=args.es_url if args.sink == "elasticsearch" else None,
        es_plain_json=args.es_plain_json,
        ble_devices=args.ble,
    )
    if args.sink == "elasticsearch" and not args.es_url:
        print("saltmarsh demo: --sink elasticsearch needs --es-url", file=sys.stderr)
        return 2
    fleet = LocalFleet.fresh(plan)
    total = plan.sensors * plan.readings_per_sensor + fleet.ble_measurements
    ble = f" + {plan.ble_devices} BLE thermometers (replay) -> ble collector" if plan.ble_devices else ""
    print(
        f"demo: {plan.sensors} sensors x {plan.readings_per_sensor} readings at {plan.rate_hz:g} Hz{ble} "
        f"-> gateway mosquitto :{fleet.gateway_broker.port} -> forwarder -> cloud mosquitto "
        f":{fleet.cloud_broker.port} -> ingester -> {_sink_text(plan)}",
        flush=True,
    )
    outage_at = args.duration / 3 if args.outage > 0 else None
    started = time.monotonic()
    cloud_down_since: float | None = None
    report: AuditReport | None = None
    try:
        fleet.start()
        deadline = started + args.duration + args.outage + args.drain_timeout
        while time.monotonic() < deadline:
            elapsed = time.monotonic() - started
            if outage_at is not None and cloud_down_since is None and elapsed >= outage_at:
                print(f"demo: t={elapsed:.0f}s stopping the cloud broker for {args.outage:g}s", flush=True)
                fleet.stop_cloud()
                cloud_down_since = elapsed
                outage_at = None
            if cloud_down_since is not None and elapsed - cloud_down_since >= args.outage:
                print(f"demo: t={elapsed:.0f}s cloud broker back; the gateway drains its spool", flush=True)
                fleet.start_cloud()
                cloud_down_since = None
            dead = [p for p in fleet.processes() if p.returncode() not in (None, 0)]
            if dead:
                # The run was checked, and it is wrong: a service the demo relies on died (1).
                # 2 is kept for what stops the demo from running at all: usage, mosquitto missing.
                for process in dead:
                    print(f"demo: {process.name} exited {process.returncode()}:\n{process.log_tail()}", file=sys.stderr)
                return 1
            print(fleet_progress_line(elapsed, fleet.statuses(), total), flush=True)
            if cloud_down_since is None and fleet.sensors_done():
                report = fleet.audit_if_stored()
                if report is not None and report.ok:
                    break
            time.sleep(1.0)
        report = fleet.audit()
    finally:
        fleet.stop()
    print(format_report(report))
    print(
        f"demo: configs, spools, logs and the database are under {plan.base_dir}\n"
        f"demo: counters: saltmarsh status --status-dir {plan.status_dir}"
    )
    return 0 if report.ok else 1


def _sink_text(plan: FleetPlan) -> str:
    return f"elasticsearch {plan.es_url}" if plan.es_url else f"sqlite {plan.sink_path}"


def cmd_audit(args: argparse.Namespace) -> int:
    if bool(args.db) == bool(args.config):
        print("saltmarsh audit: give exactly one of --db and --config", file=sys.stderr)
        return 2
    expectations: dict[str, tuple[str, int]] | None = None
    statuses: list[ServiceStatus] = []
    if args.status_dir:
        status_dir = Path(args.status_dir)
        found = _read_status_dir(status_dir, "audit")
        if found is None:
            return 2
        statuses = found
        try:
            expectations = expectations_from(statuses)
        except ValueError as err:
            print(f"saltmarsh audit: {status_dir}: {err}", file=sys.stderr)
            return 2
    spec = Path(args.db) if args.db else load_ingester_config(Path(args.config)).sink
    report = _audit(spec, expectations)
    print(format_report(report))
    if statuses:
        print(format_whereabouts(statuses))
    return 0 if report.ok else 1


def cmd_status(args: argparse.Namespace) -> int:
    statuses = _read_status_dir(Path(args.status_dir), "status")
    if statuses is None:
        return 2
    if args.json:
        now_ms = int(time.time() * 1000)
        rows = [
            {"name": s.name, "pid": s.pid, "state": s.state(now_ms), "updated_ms": s.updated_ms, **s.counters}
            for s in statuses
        ]
        print(json.dumps(rows))
        return 0
    if not statuses:
        print(f"no services have written status to {args.status_dir}")
        return 1
    now_ms = int(time.time() * 1000)
    for s in statuses:
        state = s.state(now_ms)
        age = (now_ms - s.updated_ms) / 1000
        print(f"{s.name}  pid {s.pid}  {state} (updated {age:.0f}s ago)")
        for line in format_counters(s.counters):
            print(line)
    return 0


def format_counters(counters: Mapping[str, Any]) -> list[str]:
    """A status's counters, one a line; a BLE collector's `devices` one device a line under it."""
    lines = []
    for key in sorted(counters):
        value = counters[key]
        if key == "devices" and isinstance(value, dict):
            lines.append(f"    {key:<28} {len(value)}")
            lines += [f"      {device:<18} {_device_line(row)}" for device, row in sorted(value.items())]
            continue
        if key == "ble_unknown_devices" and isinstance(value, list):
            lines.append(f"    {key:<28} {len(value)}")
            lines += [f"      {json.dumps(row)}" for row in value]
            continue
        shown = f"{value:.2f}" if isinstance(value, float) else json.dumps(value) if isinstance(value, dict) else value
        lines.append(f"    {key:<28} {shown}")
    return lines


def _device_line(row: object) -> str:
    if not isinstance(row, dict):
        return json.dumps(row)
    seen = row.get("last_seen_age_s")
    parts = [
        str(row.get("mac", "?")),
        str(row.get("kind", "?")),
        repr(row.get("place")) if row.get("place") else "-",
        f"seq {row.get('last_seq', 0)}",
        "never heard" if seen is None else f"seen {seen:.0f}s ago",
        f"{row.get('adverts_per_min', 0)}/min",
        f"rssi {row.get('rssi')}",
        f"dup {row.get('duplicates_dropped', 0)}",
        f"decrypt_failures {row.get('decrypt_failures', 0)}",
    ]
    if row.get("bad_input"):
        parts.append(f"bad {json.dumps(row['bad_input'])}")
    if row.get("stale"):
        parts.append("STALE")
    return "  ".join(parts)


def cmd_es_templates(args: argparse.Namespace) -> int:
    sink = load_ingester_config(Path(args.config)).sink
    if sink.elasticsearch is None:
        print(f"saltmarsh es-templates: {args.config} has no [sink.elasticsearch]", file=sys.stderr)
        return 2
    from saltmarsh.sinks.elasticsearch.sink import open_client
    from saltmarsh.sinks.elasticsearch.templates import FAMILIES, install_templates, template_name

    es = sink.elasticsearch
    try:
        install_templates(open_client(es), es.index_prefix, es.ilm_delete_after_days)
    except Exception as err:  # the client raises many transport types; all mean "not installed"
        print(f"saltmarsh es-templates: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    for family in FAMILIES:
        print(f"installed index template {template_name(es.index_prefix, family)}")
    return 0


def cmd_pillar_new_site(args: argparse.Namespace) -> int:
    from saltmarsh.ops.pillar import new_site

    pillar_dir = Path(args.pillar_dir)
    if not pillar_dir.is_dir():
        print(f"saltmarsh pillar new-site: pillar directory {pillar_dir} does not exist", file=sys.stderr)
        return 2
    try:
        written = new_site(args.name, args.sensors, pillar_dir)
    except UnicodeDecodeError as err:
        print(f"saltmarsh pillar new-site: {pillar_dir / 'fleet.yaml'}: not UTF-8 at byte {err.start}", file=sys.stderr)
        return 2
    for path in written:
        print(f"wrote {path}")
    print(
        f"pillar new-site: {args.name} has {args.sensors} sensors with fresh passwords; add the fleet CA "
        f"certificate and the gateway's TLS cert and key before applying the gateway role"
    )
    return 0


def cmd_pillar_add_ble_device(args: argparse.Namespace) -> int:
    from saltmarsh.ops.pillar import add_ble_device

    pillar_dir = Path(args.pillar_dir)
    if not pillar_dir.is_dir():
        print(f"saltmarsh pillar add-ble-device: pillar directory {pillar_dir} does not exist", file=sys.stderr)
        return 2
    added = add_ble_device(
        args.site,
        args.mac,
        args.kind,
        args.place,
        pillar_dir,
        expected_interval_s=args.expected_interval_s,
        bindkey_file=Path(args.bindkey_file) if args.bindkey_file else None,
        gateway=args.gateway,
    )
    # What was written where, one line a file; never a bindkey or a password.
    print(
        f"wrote {added.site_file}: BLE device {added.mac} ({added.device}, {added.kind}, {added.place!r}),"
        f" collected by {added.collector} on {added.gateway}"
    )
    if added.secret_file is not None:
        done = [f"the bindkey of {added.mac}"] if added.bindkey_added else []
        done += [f"a new password for {added.collector}"] if added.password_created else []
        print(f"wrote {added.secret_file}: {' and '.join(done)}")
    return 0


def _number_type(convert: Callable[[str], float], lo: float, inclusive: bool = True) -> Callable[[str], float]:
    """An argparse type: a number at least (or, if not `inclusive`, above) `lo`."""

    def check(text: str) -> float:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(value) or not (value >= lo if inclusive else value > lo):
            raise argparse.ArgumentTypeError(f"{text!r} must be {'at least' if inclusive else 'above'} {lo:g}")
        return value

    return check


_count = _number_type(int, 1)
_non_negative_count = _number_type(int, 0)
_positive = _number_type(float, 0, inclusive=False)
_non_negative = _number_type(float, 0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="saltmarsh", description="IoT fleet store-and-forward, end to end.")
    verbs = parser.add_subparsers(dest="verb", required=True)

    demo = verbs.add_parser("demo", help="run a local fleet through a cut uplink and audit the sink")
    demo.add_argument("--sensors", type=_count, default=5, help="simulated sensor agents (default 5)")
    demo.add_argument(
        "--ble", type=_non_negative_count, default=4, help="simulated BLE thermometers heard by the gateway (default 4)"
    )
    demo.add_argument("--rate", type=_positive, default=2.0, help="readings per second per sensor (default 2)")
    demo.add_argument("--duration", type=_positive, default=30.0, help="seconds each sensor produces (default 30)")
    demo.add_argument("--outage", type=_non_negative, default=10.0, help="seconds the cloud broker is down (0: none)")
    demo.add_argument("--drain-rate", type=_positive, default=2000.0, help="backlog drain limit, msg/s")
    demo.add_argument("--drain-timeout", type=_non_negative, default=120.0, help="seconds allowed to drain at the end")
    demo.add_argument("--dir", default="var/demo", help="where configs, spools, logs and the database go")
    demo.add_argument("--sink", choices=("sqlite", "elasticsearch"), default="sqlite", help="store of record")
    demo.add_argument("--es-url", help="Elasticsearch URL for --sink elasticsearch")
    demo.add_argument(
        "--es-plain-json", action="store_true", help="plain JSON media types (OpenSearch-API servers, osmem-server)"
    )
    demo.set_defaults(func=cmd_demo)

    audit = verbs.add_parser("audit", help="count, gaps and duplicates per device, from the sink")
    audit.add_argument("--db", help="a SQLite sink's database file")
    audit.add_argument("--config", help="an ingester config: audit whatever sink it writes to")
    audit.add_argument("--status-dir", help="read each sensor's last seq from here, to catch tail loss")
    audit.set_defaults(func=cmd_audit)

    templates = verbs.add_parser("es-templates", help="install the Elasticsearch index templates and aliases")
    templates.add_argument("--config", required=True, help="an ingester config with [sink.elasticsearch]")
    templates.set_defaults(func=cmd_es_templates)

    pillar = verbs.add_parser("pillar", help="Salt pillar for the fleet")
    pillar_verbs = pillar.add_subparsers(dest="pillar_verb", required=True)
    new_site = pillar_verbs.add_parser("new-site", help="a new site's pillar with freshly generated secrets")
    new_site.add_argument("name", help="site id, e.g. brisbane")
    new_site.add_argument("--sensors", type=_count, default=4, help="sensors at the site (default 4)")
    new_site.add_argument("--pillar-dir", default="pillar", help="the pillar tree to write into (default pillar/)")
    new_site.set_defaults(func=cmd_pillar_new_site)
    ble = pillar_verbs.add_parser(
        "add-ble-device", help="a BLE thermometer in a site's pillar, its bindkey in its gateway's secret file"
    )
    ble.add_argument("site", help="an existing site, e.g. example")
    ble.add_argument("mac", help="the device's MAC address, e.g. 54:48:E6:8F:80:A5")
    ble.add_argument("--kind", required=True, choices=("bthome", "ruuvi"), help="how it advertises")
    ble.add_argument("--place", required=True, help="where it is, e.g. 'cold room 2'")
    ble.add_argument(
        "--expected-interval-s", type=_positive, default=60.0, help="seconds between its readings (default 60)"
    )
    ble.add_argument("--bindkey-file", help="a file holding a bthome device's bindkey (32 hex characters)")
    ble.add_argument("--gateway", help="the gateway that collects the site's BLE devices (default: the site's first)")
    ble.add_argument("--pillar-dir", "--dir", dest="pillar_dir", default="pillar", help="the pillar tree (pillar/)")
    ble.set_defaults(func=cmd_pillar_add_ble_device)

    status = verbs.add_parser("status", help="every running service's counters")
    status.add_argument("--status-dir", default=str(DEFAULT_STATUS_DIR))
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(func=cmd_status)

    add_lab_parser(verbs, _count)
    add_cmd_parser(verbs)
    add_anomaly_parser(verbs)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except SaltmarshError as err:
        print(f"saltmarsh {args.verb}: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        # A file or directory the verb was given (or writes to) is missing, unreadable or full.
        where = f"{err.filename}: " if err.filename else ""
        print(f"saltmarsh {args.verb}: {where}{err.strerror or err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
