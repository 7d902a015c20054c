"""The Vagrantfile for the test fleet is valid, and Vagrant really checks what it names.

There is no hypervisor here, so provider blocks are skipped (`--ignore-provider`); the salt
provisioner's options and every file they name (keys, configs, grains) are still checked.
`make system-deps` installs Vagrant (apt, --no-install-recommends) when it is missing.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tests.salt_support import REPO

VAGRANT = shutil.which("vagrant")


def _validate(directory: Path) -> subprocess.CompletedProcess[str]:
    # A failure, not a skip: `make test` installs Vagrant, and a skipped check proves nothing.
    assert VAGRANT is not None, "vagrant is not installed: run `make system-deps`"
    return subprocess.run(
        [VAGRANT, "validate", "--ignore-provider"],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={"PATH": "/usr/bin:/bin", "HOME": str(directory), "VAGRANT_HOME": str(directory / ".vagrant.d")},
    )


def _copy_fleet(tmp_path: Path) -> Path:
    shutil.copy(REPO / "Vagrantfile", tmp_path / "Vagrantfile")
    shutil.copytree(REPO / "salt" / "keys", tmp_path / "salt" / "keys")
    shutil.copytree(REPO / "salt" / "vagrant", tmp_path / "salt" / "vagrant")
    shutil.copy(REPO / "salt" / "fleet.yaml", tmp_path / "salt" / "fleet.yaml")
    return tmp_path


def test_vagrantfile_validates(tmp_path: Path) -> None:
    done = _validate(_copy_fleet(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Vagrantfile validated successfully" in done.stdout


def test_validate_catches_a_missing_grains_file(tmp_path: Path) -> None:
    # Vagrant checks the config and grains files it names (not the key files).
    fleet = _copy_fleet(tmp_path)
    (fleet / "salt" / "vagrant" / "grains" / "sensor2").unlink()
    done = _validate(fleet)
    assert done.returncode != 0
    assert "The specified grains_config file could not be found" in done.stdout + done.stderr
