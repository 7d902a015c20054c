"""The JSON log lines say whose record each is, and an in-process service run leaves no handler behind."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest
from cloud_ingester.service import main

from saltmarsh.runtime import logs
from tests import conftest

HERE, ELSEWHERE = os.getpid(), os.getpid() + 1  # ELSEWHERE: a record salt-factories relays from a daemon

# logger name, the process that made the record, the label under an "ingester" handler
LABELS = [
    ("saltmarsh.relay.engine", HERE, "ingester"),
    ("saltmarsh.runtime.spool", HERE, "ingester"),
    ("cloud_ingester", HERE, "ingester"),
    ("cloud_ingester.consumer", HERE, "ingester"),
    ("salt", HERE, "salt"),
    ("salt.utils.event", HERE, "salt"),
    ("salt.loaded.int.engines.saltmarsh_relay", HERE, "salt"),
    ("saltfactories.plugins.log_server", HERE, "saltfactories"),
    ("paho.mqtt.client", HERE, "paho"),
    ("urllib3.connectionpool", HERE, "urllib3"),
    ("saltmarshy", HERE, "saltmarshy"),
    ("root", HERE, "root"),
    ("saltmarsh.relay.engine", ELSEWHERE, "saltmarsh"),
    ("salt.master", ELSEWHERE, "salt"),
]


@pytest.mark.parametrize(("logger", "process", "label"), LABELS)
def test_a_record_is_labelled_with_its_origin(logger: str, process: int, label: str) -> None:
    record = logging.LogRecord(logger, logging.WARNING, __file__, 1, "hello %s", ("there",), None)
    record.process = process
    doc = json.loads(logs.JsonFormatter("ingester").format(record))
    assert (doc["service"], doc["logger"], doc["msg"]) == (label, logger, "hello there")


def bad_ingester_config(tmp_path: Path) -> Path:
    config = tmp_path / "ingester.toml"
    config.write_text('ingester_id = "ing-1"\nstatus_dir = "/tmp/s"\nbatch_max_mesages = 5\n')
    return config


def test_a_service_run_in_process_labels_salt_records_as_salt(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--config", str(bad_ingester_config(tmp_path))]) == 2  # logs.setup ran, then the config failed
    capsys.readouterr()
    logging.getLogger("salt.utils.event").warning("from salt")
    logging.getLogger("saltmarsh.relay.engine").warning("from the core")
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(line["service"], line["msg"]) for line in lines] == [("salt", "from salt"), ("ingester", "from the core")]


def test_the_root_logger_is_given_back_after_an_in_process_run(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    # The test above ran the ingester's main() in process and left its handler: the wrapper took it away.
    assert not any(isinstance(handler, logs.StdoutHandler) for handler in handlers)
    around_the_test = conftest.pytest_runtest_protocol(request.node, None)  # the wrapper pytest runs every test in
    next(around_the_test)
    assert main(["--config", str(bad_ingester_config(tmp_path)), "--log-level", "debug"]) == 2
    assert [type(handler) for handler in root.handlers] == [logs.StdoutHandler]
    assert root.level == logging.DEBUG
    with pytest.raises(StopIteration):
        around_the_test.send(None)
    assert (root.handlers, root.level) == (handlers, level)


@pytest.mark.parametrize("logger", ["salt", "salt.transport.zeromq", "saltfactories.plugins.factories"])
def test_salt_logs_only_warnings_in_the_test_process(logger: str) -> None:
    assert not logging.getLogger(logger).isEnabledFor(logging.INFO)
    assert logging.getLogger(logger).isEnabledFor(logging.WARNING)
