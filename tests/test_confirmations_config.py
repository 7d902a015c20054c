"""`[confirmations]` as a table: each bad value is refused with the dotted key at fault, and the sensor
and the forwarder read it with their own window sizes as defaults."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from saltmarsh.config.confirmations import AckMode, ConfirmationsConfig
from saltmarsh.config.gateway import FORWARDER_CONFIRMATIONS, load_gateway_config
from saltmarsh.config.sensor import SENSOR_CONFIRMATIONS, load_sensor_config
from saltmarsh.config.table import Table
from saltmarsh.contract.errors import ConfigError
from saltmarsh.runtime.backoff import BackoffPolicy

WINDOW = ConfirmationsConfig(max_messages=123, max_bytes=4567)


def read(doc: dict[str, Any], defaults: ConfirmationsConfig = WINDOW) -> ConfirmationsConfig:
    return ConfirmationsConfig.from_table(Table(doc, "confirmations", "test.toml"), defaults=defaults)


def test_an_empty_table_takes_the_services_window_and_the_fleets_timings() -> None:
    cfg = read({})
    assert cfg == ConfirmationsConfig(
        max_messages=123,
        max_bytes=4567,
        mode=AckMode.END_TO_END,
        overtaken_s=10.0,
        silence_s=60.0,
        silence_max_s=600.0,
    )
    assert cfg.end_to_end
    assert cfg.silence_policy() == BackoffPolicy(60.0, 600.0, jitter=False), "a silent round never comes early"


def test_every_option_is_read() -> None:
    cfg = read(
        {
            "mode": "broker",
            "overtaken_s": 2.5,
            "silence_s": 5,
            "silence_max_s": 40,
            "max_messages": 10,
            "max_bytes": 0,
        }
    )
    assert cfg == ConfirmationsConfig(
        max_messages=10, max_bytes=0, mode=AckMode.BROKER, overtaken_s=2.5, silence_s=5.0, silence_max_s=40.0
    )
    assert not cfg.end_to_end
    assert cfg.silence_policy() == BackoffPolicy(5.0, 40.0, jitter=False)
    assert isinstance(cfg.silence_s, float), "integers in TOML are read as seconds all the same"


@pytest.mark.parametrize(
    ("mode", "expected", "end_to_end"),
    [("end-to-end", AckMode.END_TO_END, True), ("broker", AckMode.BROKER, False)],
    ids=["end-to-end", "broker"],
)
def test_modes(mode: str, expected: AckMode, end_to_end: bool) -> None:
    cfg = read({"mode": mode})
    assert (cfg.mode, cfg.end_to_end) == (expected, end_to_end)


@pytest.mark.parametrize(
    ("doc", "silence_max_s"),
    [({"silence_s": 900}, 900.0), ({"silence_s": 30}, 600.0), ({"silence_s": 86_400}, 86_400.0)],
    ids=["above the default cap", "below it", "at the limit"],
)
def test_the_default_cap_is_never_below_the_step(doc: dict[str, Any], silence_max_s: float) -> None:
    assert read(doc).silence_max_s == silence_max_s


@pytest.mark.parametrize(
    ("doc", "value"),
    [
        ({"overtaken_s": 0.1}, 0.1),
        ({"overtaken_s": 3600}, 3600.0),
        ({"silence_s": 0.1, "silence_max_s": 0.1}, 0.1),
        ({"max_messages": 1}, 1),
        ({"max_messages": 10_000_000}, 10_000_000),
        ({"max_bytes": 2**40}, 2**40),
    ],
    ids=["overtaken_s lowest", "overtaken_s highest", "silence lowest", "one message", "most messages", "a TiB"],
)
def test_bounds_are_inclusive(doc: dict[str, Any], value: float) -> None:
    cfg = read(doc)
    (key,) = [k for k in doc if k != "silence_max_s"]
    assert getattr(cfg, key) == value


BAD: list[tuple[str, dict[str, Any], str, str]] = [
    # mode
    ("unknown mode", {"mode": "e2e"}, "mode", "is not one of end-to-end, broker"),
    ("mode in capitals", {"mode": "BROKER"}, "mode", "is not one of"),
    ("mode as bool", {"mode": True}, "mode", "expected a string"),
    ("mode as number", {"mode": 1}, "mode", "expected a string"),
    # overtaken_s
    ("overtaken_s zero", {"overtaken_s": 0}, "overtaken_s", "below the minimum 0.1"),
    ("overtaken_s below the minimum", {"overtaken_s": 0.09}, "overtaken_s", "below the minimum"),
    ("overtaken_s negative", {"overtaken_s": -1}, "overtaken_s", "below the minimum"),
    ("overtaken_s above an hour", {"overtaken_s": 3601}, "overtaken_s", "above the maximum 3600"),
    ("overtaken_s as string", {"overtaken_s": "10s"}, "overtaken_s", "expected a finite number"),
    ("overtaken_s as bool", {"overtaken_s": True}, "overtaken_s", "expected a finite number"),
    ("overtaken_s infinite", {"overtaken_s": float("inf")}, "overtaken_s", "expected a finite number"),
    ("overtaken_s NaN", {"overtaken_s": float("nan")}, "overtaken_s", "expected a finite number"),
    # silence_s, silence_max_s
    ("silence_s zero", {"silence_s": 0}, "silence_s", "below the minimum 0.1"),
    ("silence_s above a day", {"silence_s": 86_401}, "silence_s", "above the maximum 86400"),
    ("silence_s as string", {"silence_s": "1m"}, "silence_s", "expected a finite number"),
    ("silence_max_s zero", {"silence_max_s": 0}, "silence_max_s", "below the minimum"),
    ("silence_max_s above a day", {"silence_max_s": 86_401}, "silence_max_s", "above the maximum"),
    ("silence_max_s as list", {"silence_max_s": [600]}, "silence_max_s", "expected a finite number"),
    ("cap below the step", {"silence_s": 100, "silence_max_s": 50}, "silence_max_s", "below silence_s 100"),
    ("cap below the default step", {"silence_max_s": 30}, "silence_max_s", "below silence_s 60"),
    ("cap a hair below the step", {"silence_s": 10, "silence_max_s": 9.99}, "silence_max_s", "below silence_s"),
    # the window
    ("max_messages zero", {"max_messages": 0}, "max_messages", "below the minimum 1"),
    ("max_messages negative", {"max_messages": -5}, "max_messages", "below the minimum 1"),
    ("max_messages too many", {"max_messages": 10_000_001}, "max_messages", "above the maximum 10000000"),
    ("max_messages as float", {"max_messages": 100.0}, "max_messages", "expected an integer"),
    ("max_messages as string", {"max_messages": "100"}, "max_messages", "expected an integer"),
    ("max_messages as bool", {"max_messages": True}, "max_messages", "expected an integer"),
    ("max_bytes negative", {"max_bytes": -1}, "max_bytes", "below the minimum 0"),
    ("max_bytes as float", {"max_bytes": 1e6}, "max_bytes", "expected an integer"),
    # typos
    ("unknown key", {"max_message": 5}, "max_message", "unknown key"),
    ("unknown key among good ones", {"mode": "broker", "silence": 60}, "silence", "unknown key"),
    ("old name", {"acknowledgement": "broker"}, "acknowledgement", "unknown key"),
]


@pytest.mark.parametrize(("doc", "key", "detail"), [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_confirmations_name_the_key(doc: dict[str, Any], key: str, detail: str) -> None:
    with pytest.raises(ConfigError) as caught:
        read(doc)
    assert caught.value.key == f"confirmations.{key}"
    assert detail in caught.value.detail
    assert f"'confirmations.{key}' in test.toml" in str(caught.value)


def test_a_config_built_in_code_checks_the_cap_too() -> None:
    with pytest.raises(ConfigError) as caught:
        ConfirmationsConfig(max_messages=1, max_bytes=0, silence_s=10.0, silence_max_s=5.0)
    assert caught.value.key == "confirmations.silence_max_s"


# -- the services' files -----------------------------------------------------------------------


def sensor_doc(tmp: Path) -> dict[str, Any]:
    return {"device": "d1", "site": "s1", "state_dir": str(tmp / "state"), "status_dir": str(tmp / "status")}


def gateway_doc(tmp: Path) -> dict[str, Any]:
    return {
        "gateway_id": "gw1",
        "state_dir": str(tmp / "state"),
        "status_dir": str(tmp / "status"),
        "local": {},
        "uplink": {},
    }


Loader = Callable[[Path], Any]
SERVICES: list[tuple[str, Callable[[Path], dict[str, Any]], Loader, ConfirmationsConfig, tuple[int, int]]] = [
    # name, minimal document, loader, the service's defaults, and their window
    ("sensor", sensor_doc, load_sensor_config, SENSOR_CONFIRMATIONS, (1000, 2**20)),
    ("forwarder", gateway_doc, load_gateway_config, FORWARDER_CONFIRMATIONS, (20_000, 8 * 2**20)),
]
IDS = [s[0] for s in SERVICES]


def write(tmp: Path, doc: dict[str, Any]) -> Path:
    path = tmp / "service.toml"
    path.write_text(tomli_w.dumps(doc))
    return path


@pytest.mark.parametrize(("make", "load", "defaults", "window"), [s[1:] for s in SERVICES], ids=IDS)
def test_without_a_table_each_service_has_its_own_window(
    tmp_path: Path,
    make: Callable[[Path], dict[str, Any]],
    load: Loader,
    defaults: ConfirmationsConfig,
    window: tuple[int, int],
) -> None:
    cfg = load(write(tmp_path, make(tmp_path)))
    assert cfg.confirmations == defaults
    assert (cfg.confirmations.max_messages, cfg.confirmations.max_bytes) == window
    assert cfg.confirmations.end_to_end, "end to end unless a site says otherwise"


@pytest.mark.parametrize(("make", "load", "defaults", "window"), [s[1:] for s in SERVICES], ids=IDS)
def test_each_service_reads_its_confirmations_table(
    tmp_path: Path,
    make: Callable[[Path], dict[str, Any]],
    load: Loader,
    defaults: ConfirmationsConfig,
    window: tuple[int, int],
) -> None:
    doc = make(tmp_path) | {"confirmations": {"mode": "broker", "silence_s": 5, "max_bytes": 100}}
    got = load(write(tmp_path, doc)).confirmations
    assert got == ConfirmationsConfig(
        max_messages=window[0], max_bytes=100, mode=AckMode.BROKER, silence_s=5.0, silence_max_s=600.0
    ), "what the table leaves out keeps the service's default"


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ({"max_mesages": 5}, "confirmations.max_mesages"),
        ({"mode": "none"}, "confirmations.mode"),
        ({"silence_s": 120, "silence_max_s": 60}, "confirmations.silence_max_s"),
        ("end-to-end", "confirmations"),
    ],
    ids=["typo", "bad mode", "cap below the step", "not a table"],
)
@pytest.mark.parametrize(("make", "load"), [s[1:3] for s in SERVICES], ids=IDS)
def test_a_bad_confirmations_table_stops_the_service_naming_the_key_and_file(
    tmp_path: Path, make: Callable[[Path], dict[str, Any]], load: Loader, table: object, key: str
) -> None:
    path = write(tmp_path, make(tmp_path) | {"confirmations": table})
    with pytest.raises(ConfigError) as caught:
        load(path)
    assert caught.value.key == key
    assert caught.value.source == str(path)
