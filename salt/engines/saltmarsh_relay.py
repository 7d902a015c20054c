"""Salt engine `saltmarsh_relay`: the master's event bus to Elasticsearch, chosen tags to Kinesis.

A thin adapter; the logic, and its tests, are in `saltmarsh.relay`. In the master config:

    engines_dirs:
      - /srv/saltmarsh/salt/engines
    engines:
      - saltmarsh_relay:
          config: /etc/saltmarsh/relay.toml    # or the same keys inline, without `config`

See `saltmarsh.config.relay` for every key.
"""

from __future__ import annotations

from typing import Any

__virtualname__ = "saltmarsh_relay"

# Set by Salt's loader after the module is executed; declared for the type checker.
__opts__: dict[str, Any]


def __virtual__() -> str | tuple[bool, str]:
    try:
        import saltmarsh.relay  # noqa: F401
    except ImportError as err:
        return False, f"saltmarsh_relay needs the saltmarsh package with the cloud extra: {err}"
    return __virtualname__


def start(**options: Any) -> None:
    import salt.utils.event  # type: ignore[import-untyped]

    from saltmarsh.relay import engine_config, run_until_signalled

    opts = __opts__  # noqa: F821
    cfg = engine_config(options)

    def open_listener() -> Any:
        return salt.utils.event.get_master_event(opts, opts["sock_dir"], listen=True)

    def open_firer() -> Any:
        return salt.utils.event.get_master_event(opts, opts["sock_dir"], listen=False)

    run_until_signalled(cfg, open_listener, open_firer)
