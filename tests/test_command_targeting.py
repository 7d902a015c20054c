"""Each matched minion's devices, from its cached grains and pillar, as the formula reads them."""

from __future__ import annotations

from typing import Any

import pytest

from saltmarsh.commands.rollout import Target
from saltmarsh.commands.targeting import minion_targets, resolve
from saltmarsh.contract.errors import ConfigError

SENSOR_GRAINS = {"roles": ["sensor"], "site": "marsh"}
GATEWAY_GRAINS = {"roles": ["gateway"], "site": "marsh"}
CASES: dict[str, tuple[str, dict[str, Any] | None, dict[str, Any] | None, str, list[Target], str | None]] = {
    "a sensor": ("s1", SENSOR_GRAINS, {}, "sensor", [Target("s1", "marsh", "s1")], None),
    "its device id from pillar": (
        "s1", SENSOR_GRAINS, {"saltmarsh": {"sensor": {"device": "probe-7"}}}, "sensor",
        [Target("s1", "marsh", "probe-7")], None,
    ),
    "a swarm host": (
        "s1", SENSOR_GRAINS, {"saltmarsh": {"sites": {"marsh": {"devices": {"s1": {"swarm": 2}}}}}}, "sensor",
        [Target("s1", "marsh", "s1-001"), Target("s1", "marsh", "s1-002")], None,
    ),
    "a gateway": ("gw1", GATEWAY_GRAINS, {}, "gateway", [Target("gw1", "marsh", "gw1")], None),
    "a gateway for a sensor op": ("gw1", GATEWAY_GRAINS, {}, "sensor", [], "do not include sensor"),
    "no site grain": ("s1", {"roles": ["sensor"]}, {}, "sensor", [], "no site grain"),
    "never answered": ("s1", None, None, "sensor", [], "no cached grains"),
    "roles as one string": (
        "s1", {"roles": "sensor", "site": "marsh"}, None, "sensor", [Target("s1", "marsh", "s1")], None,
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", CASES)
def test_a_minions_devices(name: str) -> None:
    minion, grains, pillar, role, expected, why = CASES[name]
    found, reason = minion_targets(minion, grains, pillar, role)
    assert found == expected, name
    assert (reason is None) if why is None else (reason is not None and why in reason), (name, reason)


@pytest.mark.parametrize(("tgt_type", "role", "key"), [("regex", "sensor", "tgt_type"), ("grain", "cloud", "op")])
def test_a_bad_target_type_or_role_names_the_option(tgt_type: str, role: str, key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        resolve({}, "*", tgt_type, role)
    assert caught.value.key == key
