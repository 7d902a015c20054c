"""Salt bus events for the relay bench: job returns as the master's bus carries them.

Each is `salt/job/<jid>/ret/<minion>` with a `state.apply` return of two states, about 1 KB of
JSON, the event the relay sees most on a fleet. Every event has its own jid and minion pair, so
every one is a distinct fleet-event document. The state results are one shared dict: the relay
copies what it stores, and minting stays cheap enough to leave the CPU to the relay.
"""

from __future__ import annotations

from typing import Any

MINIONS = 200
_JID_BASE = 20260101000000000000  # Salt's jids are 20-digit timestamps

STATE_RETURN: dict[str, Any] = {
    "file_|-saltmarsh-gateway-config_|-/etc/saltmarsh/gateway.toml_|-managed": {
        "name": "/etc/saltmarsh/gateway.toml",
        "changes": {},
        "result": True,
        "comment": "File /etc/saltmarsh/gateway.toml is in the correct state",
        "__sls__": "saltmarsh.gateway.config",
        "__run_num__": 0,
        "start_time": "10:00:00.123456",
        "duration": 12.345,
        "__id__": "saltmarsh-gateway-config",
    },
    "service_|-saltmarsh-gateway-service_|-saltmarsh-gateway_|-running": {
        "name": "saltmarsh-gateway",
        "changes": {},
        "result": True,
        "comment": "The service saltmarsh-gateway is already running",
        "__sls__": "saltmarsh.gateway.service",
        "__run_num__": 1,
        "start_time": "10:00:00.136000",
        "duration": 30.5,
        "__id__": "saltmarsh-gateway-service",
    },
}


def minion_id(index: int) -> str:
    return f"gw-{index % MINIONS:04d}"


def job_return(index: int, stamp: str) -> tuple[str, dict[str, Any]]:
    """Event `index` of a stream of job returns: (tag, data), as `get_event(full=True)` gives them."""
    minion = minion_id(index)
    jid = str(_JID_BASE + index // MINIONS)
    data: dict[str, Any] = {
        "cmd": "_return",
        "id": minion,
        "fun": "state.apply",
        "fun_args": ["saltmarsh.gateway"],
        "jid": jid,
        "return": STATE_RETURN,
        "retcode": 0,
        "success": True,
        "out": "highstate",
        "_stamp": stamp,
    }
    return f"salt/job/{jid}/ret/{minion}", data


def job_returns(count: int, stamp: str) -> list[tuple[str, dict[str, Any]]]:
    return [job_return(i, stamp) for i in range(count)]
