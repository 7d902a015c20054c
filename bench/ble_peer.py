"""The BLE bench's peer: a bare bleak-callback loop that only counts, fed by the same replay.

`python -m bench.ble_peer RECORDING START_S` plays RECORDING (`gateway.ble.replay` JSON lines)
in real time from the wall time START_S, as the collector beside it does, on one asyncio loop
whose detection callback adds one to a count: what a bleak scanner's callback that counts costs
on top of the replay. Both processes pay for the replay itself.

It has bleak loaded, as a bleak loop would, and imports the replay without running `gateway`'s
and `gateway.ble`'s package `__init__`s, which load the forwarder, bleak's BlueZ backend and both
parser libraries: those are ours, not a bare loop's. The replay's own needs (`saltmarsh.contract`,
the recording) are in its memory, as in ours. Its last line of output is a JSON object:
the advertisements it counted, the ones it missed (due before it started) and the resident
memory the loaded recording took.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import signal
import sys
import types
from pathlib import Path
from typing import Any

import bleak  # noqa: F401  (loaded, as in any bleak scanning loop)

from bench.procstat import memory_bytes

GATEWAY_DIR = Path(__file__).resolve().parent.parent / "gateway"


def replay_module() -> Any:
    """`gateway.ble.replay` and the two modules it needs, without their packages' `__init__`s."""
    for name, path in (("gateway", GATEWAY_DIR), ("gateway.ble", GATEWAY_DIR / "ble")):
        package = types.ModuleType(name)
        package.__path__ = [str(path)]
        sys.modules.setdefault(name, package)
    return importlib.import_module("gateway.ble.replay")


async def count(backend: Any) -> int:
    heard = 0

    def on_advertisement(_advertisement: object) -> None:
        nonlocal heard
        heard += 1

    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await backend.run(on_advertisement, stop, lambda _detail: None)
    return heard


def main(argv: list[str]) -> int:
    recording, start_s = Path(argv[0]), float(argv[1])
    replay = replay_module()
    before, _ = memory_bytes(os.getpid())
    records = replay.load(recording)
    after, _ = memory_bytes(os.getpid())
    backend = replay.ReplayBackend(records, speed=1.0, start_at=start_s, source=str(recording))
    heard = asyncio.run(count(backend))
    print(json.dumps({"counted": heard, "missed": backend.missed, "recording_rss_bytes": after - before}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
