"""Typed, strict reading of one TOML table, with errors that name the dotted key.

Unknown keys are errors too: a typo such as `quota_byte` must not silently fall back to a default.
Every service's config file, and the relay's, is read by `load_toml` here: a file that is missing,
not UTF-8 (the byte offset is named) or not TOML is a ConfigError, so the service exits 2.

Secret files (`<name>_file`) and TLS private keys (`private_file`) must be readable by their owner
only, as ssh insists for its keys: any group or other permission bit is refused, naming the file
and its mode. The Salt formula writes them 0600, owned by the service user.
"""

from __future__ import annotations

import math
import os
import stat
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from saltmarsh.contract.errors import ConfigError, ValidationError
from saltmarsh.contract.topics import check_id

T = TypeVar("T")
_MISSING: Any = object()


class Secret:
    """A credential read from a file or the environment; never printed, logged or repr'd."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


class Table:
    def __init__(self, doc: Mapping[str, Any], path: str = "", source: str = "") -> None:
        self._doc = doc
        self._path = path
        self._source = source
        self._used: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self._path}.{name}" if self._path else name

    def error(self, name: str, detail: str) -> ConfigError:
        return ConfigError(self.key(name), detail, self._source)

    def _get(self, name: str, default: Any) -> Any:
        self._used.add(name)
        if name in self._doc:
            return self._doc[name]
        if default is _MISSING:
            raise self.error(name, "is required")
        return default

    def has(self, name: str) -> bool:
        return name in self._doc

    def names(self) -> list[str]:
        """Every key, in file order: for a table whose keys are names the file chooses (metrics), not options."""
        return list(self._doc)

    def text(self, name: str, default: Any = _MISSING, choices: tuple[str, ...] = ()) -> Any:
        value = self._get(name, default)
        if value is None and default is None:
            return None
        if not isinstance(value, str):
            raise self.error(name, f"expected a string, got {type(value).__name__} {value!r}")
        if choices and value not in choices:
            raise self.error(name, f"{value!r} is not one of {', '.join(choices)}")
        return value

    def integer(self, name: str, default: Any = _MISSING, lo: int | None = None, hi: int | None = None) -> Any:
        value = self._get(name, default)
        if value is None and default is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(name, f"expected an integer, got {type(value).__name__} {value!r}")
        if lo is not None and value < lo:
            raise self.error(name, f"{value} is below the minimum {lo}")
        if hi is not None and value > hi:
            raise self.error(name, f"{value} is above the maximum {hi}")
        return value

    def number(self, name: str, default: Any = _MISSING, lo: float | None = None, hi: float | None = None) -> Any:
        value = self._get(name, default)
        if value is None and default is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise self.error(name, f"expected a finite number, got {value!r}")
        if lo is not None and value < lo:
            raise self.error(name, f"{value} is below the minimum {lo}")
        if hi is not None and value > hi:
            raise self.error(name, f"{value} is above the maximum {hi}")
        return float(value)

    def flag(self, name: str, default: Any = _MISSING) -> Any:
        value = self._get(name, default)
        if not isinstance(value, bool):
            raise self.error(name, f"expected true or false, got {value!r}")
        return value

    def ident(self, name: str, default: Any = _MISSING) -> Any:
        """A site, device or gateway id: it ends up in topics, file names and sink ids."""
        value = self.text(name, default)
        try:
            return check_id(name, value)
        except ValidationError as err:
            raise self.error(name, err.detail) from None

    def path(self, name: str, default: Any = _MISSING) -> Any:
        value = self.text(name, default)
        return None if value is None else Path(value)

    def private_file(self, name: str, default: Any = _MISSING) -> Any:
        """A path to a file holding a private key: it must exist and be readable by its owner only."""
        path = self.path(name, default)
        if path is not None:
            check_private_file(path, self.key(name), self._source)
        return path

    def array(self, name: str, default: Any = _MISSING) -> Any:
        value = self._get(name, default)
        if not isinstance(value, list):
            raise self.error(name, f"expected a list, got {type(value).__name__}")
        return value

    def table(self, name: str, required: bool = False) -> Table:
        value = self._get(name, _MISSING if required else {})
        if not isinstance(value, Mapping):
            raise self.error(name, f"expected a table, got {type(value).__name__}")
        return Table(value, self.key(name), self._source)

    def tables(self, name: str) -> list[Table]:
        out = []
        for i, item in enumerate(self.array(name, [])):
            if not isinstance(item, Mapping):
                raise self.error(f"{name}[{i}]", f"expected a table, got {type(item).__name__}")
            out.append(Table(item, f"{self.key(name)}[{i}]", self._source))
        return out

    def secret(self, name: str) -> Secret | None:
        """`<name>_file` (a path) or `<name>_env` (a variable name); never the value inline."""
        if name in self._doc:
            raise self.error(name, f"inline secrets are refused; use {name}_file or {name}_env")
        file_name = self.text(f"{name}_file", None)
        env_name = self.text(f"{name}_env", None)
        if file_name and env_name:
            raise self.error(name, f"set only one of {name}_file and {name}_env")
        if file_name:
            path = Path(file_name)
            check_private_file(path, self.key(f"{name}_file"), self._source)
            try:
                data = path.read_bytes()
            except OSError as err:
                raise self.error(f"{name}_file", f"cannot read {file_name}: {err.strerror}") from None
            try:
                value = data.decode("utf-8").strip()
            except UnicodeDecodeError as err:
                raise self.error(f"{name}_file", f"{file_name} is not UTF-8 at byte offset {err.start}") from None
            if not value:
                raise self.error(f"{name}_file", f"{file_name} is empty")
            return Secret(value)
        if env_name:
            if env_name not in os.environ:
                raise self.error(f"{name}_env", f"environment variable {env_name} is not set")
            return Secret(os.environ[env_name])
        return None

    def done(self) -> None:
        """Refuse keys nobody read: they are typos or options from another version."""
        unknown = sorted(set(self._doc) - self._used)
        if unknown:
            raise self.error(unknown[0], "unknown key")


def check_private_file(path: Path, key: str, source: str = "") -> None:
    """Refuse a secret or private-key file that anyone but its owner may read, like ssh does."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError as err:
        raise ConfigError(key, f"cannot read {path}: {err.strerror}", source) from None
    if not path.is_file():
        raise ConfigError(key, f"{path} is not a file", source)
    if mode & 0o077:
        raise ConfigError(
            key,
            f"permissions {mode:04o} for '{path}' are too open: it must be readable by its owner only (0600)",
            source,
        )


def read_toml(path: Path) -> dict[str, Any]:
    """A TOML file's document; a ConfigError naming the file (and the byte offset, if not UTF-8) if not."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ConfigError("<file>", f"cannot read: {err.strerror}", str(path)) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(
            "<file>", f"not UTF-8: byte 0x{data[err.start]:02x} at byte offset {err.start}", str(path)
        ) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError("<file>", f"not valid TOML: {err}", str(path)) from None


def load_toml(path: Path) -> Table:
    return Table(read_toml(path), "", str(path))
