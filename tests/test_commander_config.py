"""The master's commander.toml: its defaults, and each bad value named by its key."""

from __future__ import annotations

from pathlib import Path

import pytest

from saltmarsh.config.commander import load_commander_config
from saltmarsh.contract.errors import ConfigError


def write(tmp_path: Path, body: str, *, key_mode: int = 0o600) -> Path:
    key = tmp_path / "command.key"
    key.write_text("not read here")
    key.chmod(key_mode)
    config = tmp_path / "commander.toml"
    config.write_text(f'signing_key_file = "{key}"\nstore = "{tmp_path}/rollouts.db"\n' + body)
    return config


MINIMAL = '[broker]\nhost = "127.0.0.1"\nport = 8883\n[sink]\ntype = "sqlite"\npath = "/var/lib/saltmarsh/sink.db"\n'


def test_the_defaults(tmp_path: Path) -> None:
    cfg = load_commander_config(write(tmp_path, MINIMAL))
    assert (cfg.resend_s, cfg.salt_master_config, cfg.sink.path) == (
        30.0,
        Path("/etc/salt/master"),
        Path("/var/lib/saltmarsh/sink.db"),
    )


@pytest.mark.parametrize(
    ("body", "mode", "key"),
    [
        (MINIMAL, 0o644, "signing_key_file"),  # a signing key others can read
        ('[sink]\ntype = "sqlite"\npath = "/x.db"\n', 0o600, "broker"),
        ('[broker]\nhost = "h"\n', 0o600, "sink"),
        ("resend_s = 0\n" + MINIMAL, 0o600, "resend_s"),
        ('sauce = "x"\n' + MINIMAL, 0o600, "sauce"),
        (MINIMAL + 'sauce = "x"\n', 0o600, "sink.sauce"),
    ],
    ids=["key-readable-by-others", "no-broker", "no-sink", "resend-zero", "unknown-key", "unknown-sink-key"],
)
def test_a_bad_commander_config_names_the_key(tmp_path: Path, body: str, mode: int, key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_commander_config(write(tmp_path, body, key_mode=mode))
    assert caught.value.key == key, (caught.value.key, caught.value.detail)
