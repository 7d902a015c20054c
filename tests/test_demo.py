"""`make demo` on the embedded default: a short run through a cut uplink must audit clean."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent


def test_make_demo_runs_and_audits_clean(tmp_path: Path) -> None:
    demo_dir = tmp_path / "demo"
    result = subprocess.run(
        [
            "make",
            "-s",
            "-C",
            str(REPO),
            "demo",
            f"DEMO_ARGS=--sensors 3 --rate 5 --duration 12 --outage 4 --dir {demo_dir}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "stopping the cloud broker" in out
    assert "cloud broker back" in out
    assert "180 readings, 0 lost, 0 duplicated" in out, out
    assert (demo_dir / "state" / "ingester" / "saltmarsh.db").exists()
