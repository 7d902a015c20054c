"""`python -m bench [--quick] [--only ceiling,forwarder,...] [--outage-s S]`: run benches, print ratios and targets."""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from collections.abc import Callable

from bench.options import BenchOptions
from bench.results import RESULTS_MD, BenchReport, load_reports, render_markdown, render_report, save_reports
from bench.scenarios import (
    ble,
    ceiling,
    commands,
    drain,
    es,
    forwarder,
    forwarder_outage,
    ingester,
    lab_scale,
    powercut,
    relay,
    sensor,
    sink_outage,
    site_rate,
)
from bench.targets import print_targets, render_targets, verdicts

BENCHES: dict[str, Callable[[BenchOptions], BenchReport]] = {
    ceiling.NAME: ceiling.run,
    forwarder.NAME: forwarder.run,
    drain.NAME: drain.run,
    ingester.NAME: ingester.run,
    sensor.NAME: sensor.run,
    site_rate.NAME: site_rate.run,
    sink_outage.NAME: sink_outage.run,
    forwarder_outage.NAME: forwarder_outage.run,
    es.NAME: es.run,
    relay.NAME: relay.run,
    powercut.NAME: powercut.run,
    lab_scale.NAME: lab_scale.run,
    commands.NAME: commands.run,
    ble.NAME: ble.run,
}


# Run only when named: powercut (`make powercut`) boots a VM a dozen times, longer than the rest
# together; lab_scale (root) builds a 41-node lab and runs it for ~25 minutes.
OPT_IN = frozenset({powercut.NAME, lab_scale.NAME})


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="reduced sizes and one run each (development only)")
    parser.add_argument("--only", default="", help=f"comma-separated subset of: {', '.join(BENCHES)}")
    parser.add_argument("--runs", type=int, default=None, help="runs per figure (default 3, or 1 with --quick)")
    parser.add_argument("--keep-files", action="store_true", help="keep each run's temporary directory")
    parser.add_argument(
        "--outage-s", type=float, default=None, help="the gateway outage of the commands bench (default 300, quick 10)"
    )
    parser.add_argument("--render", action="store_true", help="run nothing; rewrite RESULTS.md from results.json")
    parser.add_argument("--strict", action="store_true", help="exit 1 if a target of a bench run here is missed")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    chosen = [name.strip() for name in args.only.split(",") if name.strip()] or [b for b in BENCHES if b not in OPT_IN]
    if args.render:
        chosen = []
    unknown = [name for name in chosen if name not in BENCHES]
    if unknown:
        print(f"unknown bench {unknown[0]!r}; choose from {', '.join(BENCHES)}", file=sys.stderr)
        return 2
    runs = args.runs if args.runs is not None else (1 if args.quick else 3)
    if args.outage_s is not None and not args.outage_s > 0:
        print(f"--outage-s {args.outage_s}: must be a positive number of seconds", file=sys.stderr)
        return 2
    options = BenchOptions(quick=args.quick, runs=max(1, runs), keep_files=args.keep_files, outage_s=args.outage_s)
    reports = load_reports()
    failed = []
    for name in chosen:
        started = time.monotonic()
        print(f"== {name} ({'quick' if options.quick else 'full'}, {options.runs} run(s))", flush=True)
        try:
            report = BENCHES[name](options)
        except Exception:
            traceback.print_exc()
            failed.append(name)
            continue
        reports[name] = report
        print(render_report(report))
        print(f"   ({time.monotonic() - started:.0f} s)", flush=True)
        save_reports(reports)
    items = verdicts(reports)
    print_targets(items)
    RESULTS_MD.write_text(render_markdown(reports, render_targets(items), list(BENCHES)))
    print(f"\nwrote {RESULTS_MD}")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    missed = [v.target.what for v in items if v.target.bench in chosen and v.status != "pass"]
    if args.strict and missed:
        print(f"targets missed: {'; '.join(missed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
