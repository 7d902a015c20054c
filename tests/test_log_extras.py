"""No log call passes `extra` keys that logging refuses: `extra={"name": ...}` raises KeyError in
makeRecord, which would crash a service the first time that line logs. Salt's pytest plugin
installs a logger class that drops `extra`, so only a check of the source itself finds them."""

from __future__ import annotations

import ast
import logging
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ["saltmarsh", "sensor", "gateway", "cloud-ingester/cloud_ingester", "salt", "bench"]
# What logging.Logger.makeRecord refuses to overwrite.
RESERVED = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


def extra_keys(source: str) -> list[tuple[int, str]]:
    """(line, key) of each constant key of a dict literal passed as `extra=` in this source."""
    dicts: list[ast.Dict] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call):
            dicts += [k.value for k in node.keywords if k.arg == "extra" and isinstance(k.value, ast.Dict)]
        elif (
            isinstance(node, ast.Assign)
            and isinstance(node.value, ast.Dict)
            and any(isinstance(t, ast.Name) and t.id == "extra" for t in node.targets)
        ):
            dicts.append(node.value)  # `extra = {...}` then `log.info(..., extra=extra)`
    return [
        (key.lineno, key.value)
        for d in dicts
        for key in d.keys
        if isinstance(key, ast.Constant) and isinstance(key.value, str)
    ]


@pytest.mark.parametrize(
    ("source", "bad"),
    [
        ('log.info("x", extra={"event": "e", "name": "n"})', ["name"]),
        ('log.warning("x", extra={"msg": 1, "topic": "t"})', ["msg"]),
        ('log.info("x", extra={"event": "e", "alert": "a"})', []),
        ('print("x", extra_thing={"name": 1})', []),
        ('extra = {"event": "e", "name": "n"}\nlog.info("x", extra=extra)', ["name"]),
    ],
)
def test_the_check_finds_reserved_keys(source: str, bad: list[str]) -> None:
    assert [key for _, key in extra_keys(source) if key in RESERVED] == bad


def test_no_log_call_passes_a_reserved_extra_key() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}:{line}: {key!r}"
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
        for line, key in extra_keys(path.read_text())
        if key in RESERVED
    ]
    assert not offenders, offenders
