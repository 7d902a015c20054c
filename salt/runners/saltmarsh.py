"""Salt runner `saltmarsh`: commands to devices, from the master, as `saltmarsh cmd` sends them.

    salt-run saltmarsh.cmd tgt='G@roles:sensor and G@site:brisbane' tgt_type=compound \\
        op=set_interval interval_s=30 [expires_in=10m max_per_minute=60 abort_after=20 watch=True]
    salt-run saltmarsh.cmd_status rollout=r-01jd...
    salt-run saltmarsh.cmd_cancel rollout=r-01jd...

A thin adapter over `saltmarsh.ops.cmd_cli` (the same code as the CLI, its tests included): the
target is resolved with this master's own opts, so it is what `salt --preview-target` lists. In
the master config:

    runner_dirs:
      - /srv/saltmarsh/salt/runners
"""

from __future__ import annotations

from typing import Any

__virtualname__ = "saltmarsh"

# Options of `saltmarsh cmd send`, as runner keyword arguments; every other keyword is an op arg.
_SEND_OPTIONS = ("expires_in", "run_timeout", "coalesce", "max_per_minute", "abort_after", "abort_min", "rollout")
_CONFIG = "/etc/saltmarsh/commander.toml"


def __virtual__() -> str | tuple[bool, str]:
    try:
        import saltmarsh.ops.cmd_cli  # noqa: F401
    except ImportError as err:
        return False, f"the saltmarsh runner needs the saltmarsh package in the master's Python: {err}"
    return __virtualname__


def _run(argv: list[str]) -> int:
    from saltmarsh.ops.cli import main

    return main(argv)


def cmd(
    tgt: str,
    op: str,
    tgt_type: str = "glob",
    *,
    config: str = _CONFIG,
    watch: bool = False,
    dry_run: bool = False,
    **kwargs: Any,
) -> bool:
    """Send `op` to every device `tgt` matches; True if it went well (see `saltmarsh cmd send`)."""
    options = ["--tgt-type", tgt_type, "--config", config]
    if dry_run:
        options.append("--dry-run")
    if watch:
        options.append("--watch")
    for name in _SEND_OPTIONS:
        if name in kwargs:
            options += [f"--{name.replace('_', '-')}", str(kwargs.pop(name))]
    op_args = [f"{name}={value}" for name, value in kwargs.items() if not name.startswith("__")]
    return _run(["cmd", "send", tgt, op, *op_args, *options]) == 0


def cmd_status(rollout: str, config: str = _CONFIG) -> bool:
    return _run(["cmd", "status", rollout, "--config", config]) == 0


def cmd_cancel(rollout: str, config: str = _CONFIG) -> bool:
    return _run(["cmd", "cancel", rollout, "--config", config]) == 0
