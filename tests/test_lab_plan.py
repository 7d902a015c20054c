"""Chaos plans as a table: one plan document in, the Plan or the PlanError naming the field out;
the repo's plans all load; and `expand` turns a plan into the timed faults and undos in order."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]

from saltmarsh.contract.errors import ConfigError
from saltmarsh.ops.lab.chaos import Event, expand, resolve_node
from saltmarsh.ops.lab.fleet import fleet_document, generated_fleet, load_fleet
from saltmarsh.ops.lab.lab import Lab
from saltmarsh.ops.lab.plan import MAX_STEPS, MAX_TIMES, Plan, PlanError, Step, load_plan, parse_plan
from saltmarsh.ops.lab.state import LabState

PLANS_DIR = Path(__file__).resolve().parent.parent / "saltmarsh" / "ops" / "lab" / "plans"
PLAN_FILES = sorted(PLANS_DIR.glob("*.yaml"))


def plan_of(*steps: Any, **fields: Any) -> dict[str, Any]:
    return {"name": "p", **fields, "steps": list(steps)}


CUT = {"at": 10, "do": "cut-uplink", "node": "gw1", "for": 60}
KILL = {"at": 5, "do": "kill9", "node": "gw1", "unit": "saltmarsh-forwarder"}
NETEM = {"at": 1, "do": "netem", "node": "gw1", "for": 30, "loss_pct": 20}

GOOD: list[tuple[str, dict[str, Any], Plan]] = [
    # (id, document, the plan it is)
    ("cut-uplink", plan_of(CUT), Plan("p", (Step(10.0, "cut-uplink", "gw1", duration_s=60.0),))),
    (
        "kill9-repeated",
        plan_of({**KILL, "times": 5, "every": 20}),
        Plan("p", (Step(5.0, "kill9", "gw1", unit="saltmarsh-forwarder", times=5, every_s=20.0),)),
    ),
    (
        "netem-loss-and-delay",
        plan_of({**NETEM, "delay_ms": 200}),
        Plan("p", (Step(1.0, "netem", "gw1", duration_s=30.0, loss_pct=20.0, delay_ms=200.0),)),
    ),
    (
        "netem-rate-only",
        plan_of({"at": 0, "do": "netem", "node": "gateway", "for": 5, "rate_kbit": 64}),
        Plan("p", (Step(0.0, "netem", "gateway", duration_s=5.0, rate_kbit=64.0),)),
    ),
    (
        "stop-master-defaults-to-the-master",
        plan_of({"at": 5, "do": "stop-master", "for": 60}),
        Plan("p", (Step(5.0, "stop-master", "master", duration_s=60.0),)),
    ),
    (
        "pause-elasticsearch-defaults-to-the-master",
        plan_of({"at": 20, "do": "pause-elasticsearch", "for": 30}),
        Plan("p", (Step(20.0, "pause-elasticsearch", "master", duration_s=30.0),)),
    ),
    (
        "pause-a-unit",
        plan_of({"at": 2.5, "do": "pause", "node": "gw1", "unit": "mosquitto", "for": 0.5}),
        Plan("p", (Step(2.5, "pause", "gw1", duration_s=0.5, unit="mosquitto"),)),
    ),
    (
        "spool-quota",
        plan_of({"at": 5, "do": "spool-quota", "node": "gateway", "bytes": 20000, "for": 90}),
        Plan("p", (Step(5.0, "spool-quota", "gateway", duration_s=90.0, quota_bytes=20000),)),
    ),
    (
        "stop-sink",
        plan_of({"at": 20, "do": "stop-sink", "node": "cloud", "for": 30}),
        Plan("p", (Step(20.0, "stop-sink", "cloud", duration_s=30.0),)),
    ),
    (
        "restart-units",
        plan_of({"at": 25, "do": "restart-units", "node": "gateway"}),
        Plan("p", (Step(25.0, "restart-units", "gateway"),)),
    ),
    (
        "plan-fields",
        {"name": "n", "description": "d", "settle_s": 30, "steps": [KILL, CUT]},
        Plan(
            "n",
            (Step(5.0, "kill9", "gw1", unit="saltmarsh-forwarder"), Step(10.0, "cut-uplink", "gw1", duration_s=60.0)),
            description="d",
            settle_s=30.0,
        ),
    ),
    ("name-defaults", {"steps": [KILL]}, Plan("plan", (Step(5.0, "kill9", "gw1", unit="saltmarsh-forwarder"),))),
]


@pytest.mark.parametrize(("doc", "expected"), [pytest.param(d, p, id=name) for name, d, p in GOOD])
def test_parse_plan_good(doc: dict[str, Any], expected: Plan) -> None:
    assert parse_plan(doc) == expected


QUOTA = {"at": 1, "do": "spool-quota", "node": "gw1", "for": 5, "bytes": 100}
BAD: list[tuple[str, Any, str]] = [
    # (id, document, the key the error names)
    ("not-a-mapping", ["steps"], "plan"),
    ("steps-missing", {"name": "p"}, "steps"),
    ("steps-empty", plan_of(), "steps"),
    ("steps-not-a-list", {"steps": CUT}, "steps"),
    ("too-many-steps", plan_of(*[KILL] * (MAX_STEPS + 1)), "steps"),
    ("unknown-plan-field", plan_of(KILL, colour="red"), "colour"),
    ("empty-name", plan_of(KILL, name=""), "name"),
    ("settle-zero", plan_of(KILL, settle_s=0), "settle_s"),
    ("step-not-a-mapping", plan_of("kill9"), "steps[0]"),
    ("unknown-step-field", plan_of({**KILL, "colour": "red"}), "steps[0].colour"),
    ("unknown-action", plan_of({**KILL, "do": "explode"}), "steps[0].do"),
    ("action-missing", plan_of({"at": 1, "node": "gw1"}), "steps[0].do"),
    ("second-step-named", plan_of(KILL, {**CUT, "do": "cut"}), "steps[1].do"),
    ("node-missing", plan_of({"at": 1, "do": "cut-uplink", "for": 1}), "steps[0].node"),
    ("node-empty", plan_of({**CUT, "node": ""}), "steps[0].node"),
    ("duration-action-without-for", plan_of({"at": 1, "do": "cut-uplink", "node": "gw1"}), "steps[0].for"),
    ("stop-master-without-for", plan_of({"at": 1, "do": "stop-master"}), "steps[0].for"),
    ("for-on-kill9", plan_of({**KILL, "for": 10}), "steps[0].for"),
    ("for-negative", plan_of({**CUT, "for": -1}), "steps[0].for"),
    ("kill9-without-unit", plan_of({"at": 1, "do": "kill9", "node": "gw1"}), "steps[0].unit"),
    ("pause-without-unit", plan_of({"at": 1, "do": "pause", "node": "gw1", "for": 1}), "steps[0].unit"),
    ("unit-empty", plan_of({**KILL, "unit": ""}), "steps[0].unit"),
    ("times-zero", plan_of({**KILL, "times": 0}), "steps[0].times"),
    ("times-too-many", plan_of({**KILL, "times": MAX_TIMES + 1, "every": 1}), "steps[0].times"),
    ("times-not-whole", plan_of({**KILL, "times": 2.5, "every": 1}), "steps[0].times"),
    ("times-bool", plan_of({**KILL, "times": True}), "steps[0].times"),
    ("repeated-without-every", plan_of({**KILL, "times": 3}), "steps[0].every"),
    ("repeated-every-zero", plan_of({**KILL, "times": 3, "every": 0}), "steps[0].every"),
    ("netem-without-impairment", plan_of({"at": 1, "do": "netem", "node": "gw1", "for": 5}), "steps[0]"),
    ("netem-all-zero", plan_of({**NETEM, "loss_pct": 0, "delay_ms": 0}), "steps[0]"),
    ("loss-on-a-cut", plan_of({**CUT, "loss_pct": 5}), "steps[0]"),
    ("rate-on-a-kill9", plan_of({**KILL, "rate_kbit": 64}), "steps[0]"),
    ("loss-above-100", plan_of({**NETEM, "loss_pct": 101}), "steps[0].loss_pct"),
    ("rate-zero", plan_of({**NETEM, "rate_kbit": 0}), "steps[0].rate_kbit"),
    ("delay-a-string", plan_of({**NETEM, "delay_ms": "200ms"}), "steps[0].delay_ms"),
    ("at-negative", plan_of({**KILL, "at": -1}), "steps[0].at"),
    ("at-missing", plan_of({"do": "kill9", "node": "gw1", "unit": "u"}), "steps[0].at"),
    ("at-a-string", plan_of({**KILL, "at": "10s"}), "steps[0].at"),
    ("at-bool", plan_of({**KILL, "at": True}), "steps[0].at"),
    ("at-beyond-a-day", plan_of({**KILL, "at": 86_401}), "steps[0].at"),
    ("quota-without-bytes", plan_of({"at": 1, "do": "spool-quota", "node": "gw1", "for": 5}), "steps[0].bytes"),
    ("bytes-on-a-kill9", plan_of({**KILL, "bytes": 100}), "steps[0].bytes"),
    ("quota-zero", plan_of({**QUOTA, "bytes": 0}), "steps[0].bytes"),
    ("quota-a-string", plan_of({**QUOTA, "bytes": "1M"}), "steps[0].bytes"),
    ("quota-without-for", plan_of({"at": 1, "do": "spool-quota", "node": "gw1", "bytes": 100}), "steps[0].for"),
]


@pytest.mark.parametrize(("doc", "key"), [pytest.param(d, k, id=name) for name, d, k in BAD])
def test_parse_plan_names_the_bad_field(doc: Any, key: str) -> None:
    with pytest.raises(PlanError) as caught:
        parse_plan(doc)
    assert caught.value.key == key
    assert repr(key) in str(caught.value)


def test_plan_errors_are_config_errors() -> None:
    # The CLI reports every ConfigError the same way; a bad plan must be one.
    assert issubclass(PlanError, ConfigError)


def test_the_repo_has_plans() -> None:
    assert PLAN_FILES, f"no plans in {PLANS_DIR}"


@pytest.mark.parametrize("path", PLAN_FILES, ids=[p.stem for p in PLAN_FILES])
def test_every_repo_plan_loads(path: Path) -> None:
    plan = load_plan(path)
    # `saltmarsh lab chaos <name>` finds a plan by its file's name.
    assert plan.name == path.stem
    assert plan.steps
    assert plan.description
    assert plan.length_s > 0
    # Each plan fits any fleet: its nodes resolve in the repo's fleet and in a generated one.
    for fleet in (load_fleet(), generated_fleet(2, 2)):
        lab = Lab(LabState(base=Path("/nonexistent"), fleet=fleet_document(fleet)))
        for step in plan.steps:
            assert resolve_node(lab, step.node) in {n.id for n in fleet.nodes}


def test_load_plan_names_the_file_it_cannot_read(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("steps: [unclosed\n")
    with pytest.raises(PlanError) as caught:
        load_plan(path)
    assert caught.value.key == str(path)


TOML_PLAN = """
name = "cuts"
description = "cut, then kill"
settle_s = 60

[[steps]]
at = 10
do = "cut-uplink"
node = "gw1"
for = 60

[[steps]]
at = 1
do = "netem"
node = "gateway"
for = 30
loss_pct = 20
delay_ms = 200.5
rate_kbit = 512

[[steps]]
at = 5
do = "kill9"
node = "gw1"
unit = "saltmarsh-forwarder"
times = 3
every = 10
"""

YAML_PLAN = """
name: cuts
description: cut, then kill
settle_s: 60
steps:
  - {at: 10, do: cut-uplink, node: gw1, for: 60}
  - {at: 1, do: netem, node: gateway, for: 30, loss_pct: 20, delay_ms: 200.5, rate_kbit: 512}
  - {at: 5, do: kill9, node: gw1, unit: saltmarsh-forwarder, times: 3, every: 10}
"""


def test_toml_and_yaml_of_one_plan_are_equal(tmp_path: Path) -> None:
    (tmp_path / "cuts.toml").write_text(TOML_PLAN)
    (tmp_path / "cuts.yaml").write_text(YAML_PLAN)
    from_toml = load_plan(tmp_path / "cuts.toml")
    from_yaml = load_plan(tmp_path / "cuts.yaml")
    assert from_toml == from_yaml
    assert from_yaml == parse_plan(yaml.safe_load(YAML_PLAN))
    assert [s.do for s in from_yaml.steps] == ["cut-uplink", "netem", "kill9"]
    assert from_yaml.steps[1].rate_kbit == 512.0


def test_a_plan_without_a_name_is_named_after_its_file(tmp_path: Path) -> None:
    (tmp_path / "nameless.toml").write_text(TOML_PLAN.replace('name = "cuts"\n', ""))
    assert load_plan(tmp_path / "nameless.toml").name == "nameless"


def test_scaled_multiplies_every_time() -> None:
    plan = parse_plan(
        plan_of(
            {**KILL, "at": 8, "times": 3, "every": 20},
            {**NETEM, "at": 4, "for": 40, "loss_pct": 10, "delay_ms": 100, "rate_kbit": 256},
            settle_s=300,
        )
    )
    quarter = plan.scaled(0.25)
    assert quarter.steps == (
        Step(2.0, "kill9", "gw1", unit="saltmarsh-forwarder", times=3, every_s=5.0),
        Step(1.0, "netem", "gw1", duration_s=10.0, loss_pct=10.0, delay_ms=100.0, rate_kbit=256.0),
    )
    assert quarter.length_s == plan.length_s * 0.25
    assert (quarter.name, quarter.description) == (plan.name, plan.description)


@pytest.mark.parametrize("scale", [0, -1, -0.25])
def test_scaled_refuses_a_scale_that_is_not_above_zero(scale: float) -> None:
    plan = parse_plan(plan_of(KILL))
    with pytest.raises(PlanError) as caught:
        plan.scaled(scale)
    assert caught.value.key == "scale"


def timeline(events: list[Event]) -> list[tuple[float, str, bool]]:
    return [(e.at, e.label, e.undo) for e in events]


@pytest.mark.parametrize(
    ("steps", "expected"),
    [
        pytest.param(
            [{**KILL, "at": 7, "times": 3, "every": 10}],
            [
                (7.0, "kill9 gw1/saltmarsh-forwarder", False),
                (17.0, "kill9 gw1/saltmarsh-forwarder", False),
                (27.0, "kill9 gw1/saltmarsh-forwarder", False),
            ],
            id="kill9-times-3-every-10",
        ),
        pytest.param(
            [{**CUT, "at": 10, "for": 60}],
            [(10.0, "cut-uplink gw1", False), (70.0, "end cut-uplink gw1", True)],
            id="duration-step-then-its-undo",
        ),
        pytest.param(
            [{"at": 5, "do": "pause", "node": "gw1", "unit": "mosquitto", "for": 2, "times": 2, "every": 10}],
            [
                (5.0, "pause gw1/mosquitto", False),
                (7.0, "end pause gw1/mosquitto", True),
                (15.0, "pause gw1/mosquitto", False),
                (17.0, "end pause gw1/mosquitto", True),
            ],
            id="repeated-duration-step",
        ),
        pytest.param(
            # The kill comes first in the plan, the cut's end at the same instant runs before it.
            [{**KILL, "at": 70}, {**CUT, "at": 10, "for": 60}],
            [
                (10.0, "cut-uplink gw1", False),
                (70.0, "end cut-uplink gw1", True),
                (70.0, "kill9 gw1/saltmarsh-forwarder", False),
            ],
            id="undo-before-a-fault-at-the-same-instant",
        ),
        pytest.param(
            [{**CUT, "at": 0, "for": 30}, {"at": 30, "do": "stop-master", "for": 5}],
            [
                (0.0, "cut-uplink gw1", False),
                (30.0, "end cut-uplink gw1", True),
                (30.0, "stop-master master", False),
                (35.0, "end stop-master master", True),
            ],
            id="one-ends-as-the-next-starts",
        ),
        pytest.param(
            [{**KILL, "at": 20}, {**KILL, "at": 20, "unit": "mosquitto"}],
            [(20.0, "kill9 gw1/saltmarsh-forwarder", False), (20.0, "kill9 gw1/mosquitto", False)],
            id="faults-at-one-instant-keep-plan-order",
        ),
    ],
)
def test_expand_orders_faults_and_undos(steps: list[dict[str, Any]], expected: list[tuple[float, str, bool]]) -> None:
    events = expand(parse_plan(plan_of(*steps)))
    assert timeline(events) == expected


def test_expand_events_carry_their_step() -> None:
    plan = parse_plan(plan_of({**NETEM, "delay_ms": 100}))
    events = expand(plan)
    assert [e.step for e in events] == [plan.steps[0], plan.steps[0]]


@pytest.mark.parametrize(
    "step",
    [
        {**CUT, "for": 0},
        {"at": 1, "do": "stop-master", "for": 0},
        {"at": 1, "do": "pause", "node": "gw1", "unit": "mosquitto", "for": 0},
    ],
    ids=["cut-uplink", "stop-master", "pause"],
)
def test_a_duration_fault_is_always_undone_or_refused(step: dict[str, Any]) -> None:
    try:
        plan = parse_plan(plan_of(step))
    except PlanError as err:
        assert err.key == "steps[0].for"
        return
    assert [e.undo for e in expand(plan)] == [False, True]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("master", "master"),
        ("cloud", "master"),
        ("gateway", "site01-gw1"),
        ("gateway:site02", "site02-gw1"),
        ("site02-s001", "site02-s001"),
    ],
)
def test_resolve_node(name: str, expected: str) -> None:
    lab = Lab(LabState(base=Path("/nonexistent"), fleet=fleet_document(generated_fleet(2, 2))))
    assert resolve_node(lab, name) == expected


@pytest.mark.parametrize(("name", "key"), [("nobody", "node"), ("gateway:site09", "sites.site09")])
def test_resolve_node_names_what_it_cannot_find(name: str, key: str) -> None:
    lab = Lab(LabState(base=Path("/nonexistent"), fleet=fleet_document(generated_fleet(2, 2))))
    with pytest.raises(ConfigError) as caught:
        resolve_node(lab, name)
    assert caught.value.key == key


def test_resolve_node_finds_a_sites_nth_sensor() -> None:
    lab = Lab(LabState(base=Path("/nonexistent"), fleet=fleet_document(generated_fleet(2, 2))))
    assert resolve_node(lab, "sensor:site02:2") == "site02-s002"
