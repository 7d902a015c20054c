"""Who a command goes to: Salt's own matcher over the master's minion data, then each minion's devices.

In: a target and its type as an operator gives them to `salt` (`-G`, `-C`, `-N`, `-L`, a glob),
and the op's role. Out: the explicit list of devices (`Target`), resolved once, to be kept with
the rollout; and the minions that matched but cannot take the op, each with why.

The minions are exactly what `salt --preview-target` lists on the same master: the same call
(`salt.utils.minions.CkMinions(opts).check_minions`), not a parser of our own. Each minion's
devices come from its cached grains and pillar, as the formula reads them: a sensor minion is
one device (`saltmarsh:sensor:device`, else its id) or a swarm host of N (its site pillar's
`swarm`); a gateway minion is its gateway id (`saltmarsh:gateway:id`, else its id).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from saltmarsh.commands.rollout import Target
from saltmarsh.config.sensor import swarm_device_id
from saltmarsh.contract.errors import ConfigError
from saltmarsh.contract.ops import GATEWAY, SENSOR

# saltmarsh cmd send --tgt-type X -> Salt's tgt_type (salt -G / -C / -N / -L / -E)
TARGET_TYPES: Mapping[str, str] = {
    "glob": "glob",
    "grain": "grain",
    "compound": "compound",
    "nodegroup": "nodegroup",
    "list": "list",
    "pcre": "pcre",
}


def _get(doc: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(doc, Mapping):
            return None
        doc = doc.get(key)
    return doc


def minion_targets(
    minion: str, grains: Mapping[str, Any] | None, pillar: Mapping[str, Any] | None, role: str
) -> tuple[list[Target], str | None]:
    """The devices of one matched minion that take `role`'s ops; or none, and why."""
    if not grains:
        return [], "no cached grains (has it ever answered this master?)"
    roles = grains.get("roles") or []
    if isinstance(roles, str):
        roles = [roles]
    if role not in roles:
        return [], f"roles {sorted(roles)} do not include {role}"
    site = grains.get("site")
    if not isinstance(site, str) or not site:
        return [], "no site grain"
    if role == GATEWAY:
        return [Target(minion, site, str(_get(pillar, "saltmarsh", "gateway", "id") or minion))], None
    device = str(_get(pillar, "saltmarsh", "sensor", "device") or minion)
    swarm = _get(pillar, "saltmarsh", "sites", site, "devices", device, "swarm")
    if isinstance(swarm, int) and not isinstance(swarm, bool) and swarm > 0:
        return [Target(minion, site, swarm_device_id(device, n)) for n in range(1, swarm + 1)], None
    return [Target(minion, site, device)], None


def resolve(opts: Mapping[str, Any], tgt: str, tgt_type: str, role: str) -> tuple[list[Target], list[tuple[str, str]]]:
    """Resolve on this master: (the targets, [(minion, why it was left out)])."""
    if tgt_type not in TARGET_TYPES:
        raise ConfigError("tgt_type", f"{tgt_type!r} is not one of {', '.join(TARGET_TYPES)}")
    if role not in (SENSOR, GATEWAY):
        raise ConfigError("op", f"role {role!r} takes no commands")
    import salt.utils.minions  # type: ignore[import-untyped]  # the master's Salt, imported only when used

    minions = sorted(
        salt.utils.minions.CkMinions(dict(opts)).check_minions(tgt, tgt_type=TARGET_TYPES[tgt_type])["minions"]
    )
    targets: list[Target] = []
    left_out: list[tuple[str, str]] = []
    for minion in minions:
        _, grains, pillar = salt.utils.minions.get_minion_data(minion, dict(opts))
        found, why = minion_targets(minion, grains, pillar, role)
        targets.extend(found)
        if why is not None:
            left_out.append((minion, why))
    return targets, left_out


def by_site(targets: Sequence[Target]) -> dict[str, list[Target]]:
    out: dict[str, list[Target]] = {}
    for target in targets:
        out.setdefault(target.site, []).append(target)
    return out
