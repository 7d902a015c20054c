"""`saltmarsh cmd keygen | send | resume | status | cancel`: commands to the fleet, from the master.

    saltmarsh cmd keygen --key /etc/saltmarsh/command.key
    saltmarsh cmd send 'G@roles:sensor and G@site:brisbane' set_interval interval_s=30 \\
        --tgt-type compound --expires-in 10m --max-per-minute 60 --abort-after 20 --watch
    saltmarsh cmd resume r-01jd7y... [--watch]
    saltmarsh cmd status r-01jd7y... [--watch]
    saltmarsh cmd cancel r-01jd7y...

`send` resolves the target with Salt's own matcher on this master (`saltmarsh.commands.targeting`),
keeps the explicit list with the rollout, then publishes within the rate until every target is
sent (and with `--watch`, follows it until every target has a final state). A `send` stopped
before every target was sent (Ctrl-C, a lost session) leaves them QUEUED in the rollout store:
`resume` goes on dispatching it, with the same command ids and the same deadline. `status` reads
each target's state from the sink, and past the deadline gives the master's own verdict on what
never came back (EXPIRED at the cloud, or TIMED_OUT). Exit codes as every verb: 0 all went well (every target
succeeded), 1 something did not (a target failed, was rejected, expired, timed out or was
canceled), 2 bad input (the message names the option or the field).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from saltmarsh.commands.dispatch import Dispatcher, collect
from saltmarsh.commands.rollout import DISPATCHING, RolloutSpec, RolloutStore, Summary
from saltmarsh.commands.states import state_reader
from saltmarsh.commands.targeting import TARGET_TYPES, resolve
from saltmarsh.config.commander import CommanderConfig, load_commander_config
from saltmarsh.contract.command import new_cmd_id
from saltmarsh.contract.command_state import CommandState
from saltmarsh.contract.errors import ConfigError, SinkUnavailable
from saltmarsh.contract.ops import find_op, parse_cli_args, validate_op
from saltmarsh.contract.signature import generate_key, load_private_key

DEFAULT_CONFIG = Path("/etc/saltmarsh/commander.toml")
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd]?)$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
SUCCESS = frozenset((CommandState.SUCCEEDED,))
POLL_S = 1.0


def parse_duration(text: str) -> float:
    """`90`, `90s`, `10m`, `2h`, `1d` in seconds; ConfigError naming --expires-in otherwise."""
    found = _DURATION.fullmatch(text.strip())
    if found is None or float(found.group(1)) <= 0:
        raise ConfigError("expires_in", f"{text[:40]!r} is not a duration such as 90s, 10m or 2h")
    return float(found.group(1)) * _UNITS[found.group(2)]


def format_summary(summary: Summary, *, op: str = "", target: str = "", reason: str | None = None) -> str:
    order = [s.value for s in CommandState]
    counts = "  ".join(f"{state} {summary.counts[state]}" for state in order if state in summary.counts)
    what = f" ({op} to {target})" if op else ""
    # A rollout still open for dispatch whose every target has a final state is done with.
    status = "finished" if summary.finished and summary.status == DISPATCHING else summary.status
    lines = [f"rollout {summary.rollout}: {status}, {summary.targets} targets{what}", f"  {counts or 'none'}"]
    if reason:
        lines.append(f"  {reason}")
    timing = []
    if summary.oldest_pending_s is not None:
        timing.append(f"oldest pending {summary.oldest_pending_s:.1f} s")
    if summary.p50_s is not None:
        timing.append(f"send to result p50 {summary.p50_s:.2f} s, p95 {summary.p95_s:.2f} s")
    if timing:
        lines.append("  " + "; ".join(timing))
    return "\n".join(lines)


def _exit_code(summary: Summary) -> int:
    done_well = all(CommandState(state) in SUCCESS for state in summary.counts)
    return 0 if done_well and summary.finished else 1


def cmd_keygen(args: argparse.Namespace) -> int:
    path = Path(args.key)
    if path.exists():
        raise ConfigError("key", f"{path} exists: a new key would strand every device that trusts the old one")
    private_pem, public = generate_key()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(private_pem)
    print(f"wrote {path} (mode 0600): the signing key; it stays on this master, never in pillar")
    print("add the public key to pillar, then apply the sensor and gateway roles:")
    print(f"saltmarsh:\n  commands:\n    public_keys:\n      - {public}")
    return 0


def _publisher(cfg: CommanderConfig) -> tuple[Callable[[str, bytes, int], None], Callable[[], None]]:
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    from saltmarsh.mqtt.paho import connect_client, make_client

    client = make_client(cfg.broker)
    connect_client(client, cfg.broker, clean_start=True)
    client.loop_start()
    deadline = time.monotonic() + 30
    while not client.is_connected() and time.monotonic() < deadline:
        time.sleep(0.05)
    if not client.is_connected():
        client.loop_stop()
        raise SinkUnavailable(f"cloud broker {cfg.broker.host}:{cfg.broker.port}: not connected after 30 s")

    def publish(topic: str, payload: bytes, seconds_left: int) -> None:
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.MessageExpiryInterval = seconds_left  # set from the body's deadline, never the only copy
        client.publish(topic, payload, qos=1, retain=False, properties=props).wait_for_publish(30)

    def close() -> None:
        client.loop_stop()
        client.disconnect()

    return publish, close


def cmd_send(args: argparse.Namespace) -> int:
    cfg = load_commander_config(Path(args.config))
    spec_op = find_op(args.op)
    _, op_args = validate_op(spec_op.role, args.op, parse_cli_args(spec_op, args.args))
    expires_s = parse_duration(args.expires_in)
    import salt.config  # type: ignore[import-untyped]  # the master's Salt

    opts = salt.config.master_config(str(cfg.salt_master_config))
    targets, left_out = resolve(opts, args.target, args.tgt_type, spec_op.role)
    for minion, why in left_out:
        print(f"  left out {minion}: {why}")
    if not targets:
        print(f"saltmarsh cmd send: {args.target!r} ({args.tgt_type}) matched no {spec_op.role}", file=sys.stderr)
        return 1
    now_ms = int(time.time() * 1000)
    rollout = args.rollout or f"r-{new_cmd_id(now_ms).lower()}"
    spec = RolloutSpec(
        rollout=rollout,
        op=args.op,
        args=op_args,
        target=args.target,
        target_type=args.tgt_type,
        created_ms=now_ms,
        not_after_ms=now_ms + int(expires_s * 1000),
        run_timeout_s=args.run_timeout,
        coalesce=args.coalesce,
        max_per_minute=args.max_per_minute,
        abort_after_pct=args.abort_after,
        abort_min=args.abort_min,
    )
    # A dry run keeps nothing: its rollout lives in memory, and is gone with it.
    store = RolloutStore.open(Path(":memory:") if args.dry_run else cfg.store)
    try:
        store.create(spec, targets)
        print(f"rollout {rollout}: {args.op} to {len(targets)} devices, expires in {args.expires_in}")
        if args.dry_run:
            for target, cmd_id, _ in store.targets(rollout):
                print(f"  {target.site}/{target.device} (minion {target.minion}): {cmd_id}")
            print("dry run: nothing sent, nothing kept")
            return 0
        return _dispatch(cfg, store, rollout, watch=args.watch)
    finally:
        store.close()


def _dispatch(cfg: CommanderConfig, store: RolloutStore, rollout: str, *, watch: bool) -> int:
    key = load_private_key(Path(cfg.signing_key_file).read_bytes(), "signing_key_file")
    publish, close = _publisher(cfg)
    dispatcher = Dispatcher(store, key, publish, state_reader(cfg.sink), resend_s=cfg.resend_s)
    spec = store.spec(rollout)
    try:
        while True:
            dispatcher.step(rollout)
            summary = store.summary(rollout, int(time.time() * 1000))
            queued = summary.counts.get(CommandState.QUEUED.value, 0)
            print(f"\r  {_progress(summary)}", end="", file=sys.stderr, flush=True)
            if summary.finished or store.status(rollout) != DISPATCHING:
                break
            if not watch and not queued:
                break
            time.sleep(POLL_S)
    except KeyboardInterrupt:
        print(f"\nstopped: what is not sent stays queued; `saltmarsh cmd resume {rollout}` goes on", file=sys.stderr)
        raise
    finally:
        print(file=sys.stderr)
        close()
    summary = store.summary(rollout, int(time.time() * 1000))
    print(format_summary(summary, op=spec.op, target=spec.target, reason=store.reason(rollout)))
    return _exit_code(summary) if watch else (0 if summary.status == DISPATCHING else 1)


def _progress(summary: Summary) -> str:
    done = sum(n for state, n in summary.counts.items() if CommandState(state).terminal)
    return f"{done}/{summary.targets} done, " + ", ".join(f"{s} {n}" for s, n in sorted(summary.counts.items()))


def cmd_status(args: argparse.Namespace) -> int:
    cfg = load_commander_config(Path(args.config))
    store = RolloutStore.open(cfg.store)
    read = state_reader(cfg.sink)
    try:
        spec = store.spec(args.rollout)
        while True:
            collect(store, args.rollout, read(args.rollout))
            now_ms = int(time.time() * 1000)
            store.time_out(args.rollout, now_ms)
            summary = store.summary(args.rollout, now_ms)
            text = format_summary(summary, op=spec.op, target=spec.target, reason=store.reason(args.rollout))
            if not args.watch or summary.finished:
                print(text)
                return _exit_code(summary)
            print("\033[2J\033[H" + text, flush=True)
            time.sleep(args.interval)
    finally:
        store.close()


def cmd_resume(args: argparse.Namespace) -> int:
    cfg = load_commander_config(Path(args.config))
    store = RolloutStore.open(cfg.store)
    try:
        status = store.status(args.rollout)
        if status != DISPATCHING:
            why = store.reason(args.rollout)
            print(f"rollout {args.rollout} is {status} ({why}): nothing to resume", file=sys.stderr)
            return 1
        return _dispatch(cfg, store, args.rollout, watch=args.watch)
    finally:
        store.close()


def cmd_cancel(args: argparse.Namespace) -> int:
    cfg = load_commander_config(Path(args.config))
    store = RolloutStore.open(cfg.store)
    try:
        canceled = store.cancel(args.rollout)
        print(f"rollout {args.rollout}: {canceled} targets not yet sent are canceled; what was sent may still run")
    finally:
        store.close()
    return 0


def add_cmd_parser(verbs: Any) -> None:
    cmd = verbs.add_parser("cmd", help="signed commands to devices, targeted with Salt's matchers (on the master)")
    cmd_verbs = cmd.add_subparsers(dest="cmd_verb", required=True)
    config_help = f"the commander's config (default {DEFAULT_CONFIG})"

    keygen = cmd_verbs.add_parser("keygen", help="make the fleet's command signing key (once, on the master)")
    keygen.add_argument("--key", required=True, help="where to write the private key (mode 0600)")
    keygen.set_defaults(func=cmd_keygen)

    send = cmd_verbs.add_parser("send", help="send an op to every device a Salt target matches")
    send.add_argument("target", help="as salt takes it: a glob, 'roles:sensor', a compound expression, a nodegroup")
    send.add_argument("op", help="set_interval, read_now, identify, restart_agent, set_drain_rate, ...")
    send.add_argument("args", nargs="*", metavar="NAME=VALUE", help="the op's args")
    send.add_argument("--tgt-type", choices=sorted(TARGET_TYPES), default="glob")
    send.add_argument("--expires-in", default="10m", help="deadline from now: 90s, 10m, 2h (default 10m)")
    send.add_argument("--run-timeout", type=float, default=30.0, help="seconds an op may run (default 30)")
    send.add_argument("--coalesce", help="latest wins: supersede queued commands with this key")
    send.add_argument("--max-per-minute", type=float, help="dispatch at most this many targets a minute")
    send.add_argument("--abort-after", type=float, metavar="PCT", help="stop dispatching once PCT%% of results fail")
    send.add_argument("--abort-min", type=int, default=10, help="results needed before --abort-after applies")
    send.add_argument("--rollout", help="the rollout's name (default r-<ulid>)")
    send.add_argument("--watch", action="store_true", help="follow it until every target has a final state")
    send.add_argument("--dry-run", action="store_true", help="resolve and list the targets, send nothing")
    send.add_argument("--config", default=str(DEFAULT_CONFIG), help=config_help)
    send.set_defaults(func=cmd_send)

    resume = cmd_verbs.add_parser("resume", help="go on dispatching a rollout whose send was stopped")
    resume.add_argument("rollout")
    resume.add_argument("--watch", action="store_true", help="follow it until every target has a final state")
    resume.add_argument("--config", default=str(DEFAULT_CONFIG), help=config_help)
    resume.set_defaults(func=cmd_resume)

    status = cmd_verbs.add_parser("status", help="a rollout's count per state, oldest pending, p50/p95 latency")
    status.add_argument("rollout")
    status.add_argument("--watch", action="store_true", help="refresh until every target has a final state")
    status.add_argument("--interval", type=float, default=2.0)
    status.add_argument("--config", default=str(DEFAULT_CONFIG), help=config_help)
    status.set_defaults(func=cmd_status)

    cancel = cmd_verbs.add_parser("cancel", help="cancel what a rollout has not sent yet")
    cancel.add_argument("rollout")
    cancel.add_argument("--config", default=str(DEFAULT_CONFIG), help=config_help)
    cancel.set_defaults(func=cmd_cancel)
