"""YAML as configs read it: preset files (built-in or a user's), ``--set`` values, stored configs.

One loader for all (:func:`load_yaml`): safe, without aliases (no expansion bombs), at most
:data:`MAX_YAML_DEPTH` levels deep; a preset file is at most :data:`MAX_YAML_BYTES` of UTF-8.
"""

from __future__ import annotations

import reprlib
from importlib import resources
from pathlib import Path

import yaml

from .errors import InputError
from .files import reading

MAX_YAML_BYTES = 2**20
MAX_YAML_DEPTH = 16


def preset_dir() -> Path:
    """The built-in presets: the repository's ``presets/`` folder, installed as the package ``retune_cli.presets``."""
    try:
        installed = Path(str(resources.files("retune_cli.presets")))
        if any(installed.glob("*.yaml")):
            return installed
    except ModuleNotFoundError:
        pass
    return Path(__file__).resolve().parent.parent / "presets"  # a source checkout that was never installed


def preset_names() -> list[str]:
    return sorted(p.stem for p in preset_dir().glob("*.yaml"))


class _ConfigLoader(yaml.SafeLoader):
    """Safe YAML for configs: no aliases (no expansion bombs), at most :data:`MAX_YAML_DEPTH` levels."""

    depth = 0

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            raise yaml.composer.ComposerError(None, None, "aliases (*name) are not allowed", event.start_mark)
        if self.depth >= MAX_YAML_DEPTH:
            raise yaml.composer.ComposerError(None, None, f"nested deeper than {MAX_YAML_DEPTH} levels",
                                              event.start_mark)
        self.depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


def problem(error: yaml.YAMLError) -> str:
    """What a YAML error says is wrong, in a few words."""
    return getattr(error, "problem", None) or type(error).__name__


def load_yaml(text: str):
    """``text`` read as config YAML (:class:`_ConfigLoader`); ``yaml.YAMLError`` if it is not."""
    return yaml.load(text, Loader=_ConfigLoader)  # a SafeLoader


def read_yaml(path: Path) -> dict:
    """A preset file: at most 1 MB of UTF-8 YAML (see :func:`load_yaml`)."""
    with reading(path, "preset file"), open(path, "rb") as f:
        data = f.read(MAX_YAML_BYTES + 1)
    if len(data) > MAX_YAML_BYTES:
        raise InputError(f"preset file {path} is larger than {MAX_YAML_BYTES // 2**20} MB; a preset is short YAML")
    try:
        return load_yaml(data.decode()) or {}
    except UnicodeDecodeError:
        raise InputError(f"{path} is not a UTF-8 text file; a preset is YAML text") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise InputError(f"{path}:{where} is not valid YAML ({problem(e)})") from None


def load_preset(name: str) -> dict:
    """The raw mapping of a built-in preset NAME or of a YAML file."""
    path = Path(name)
    if name.endswith((".yaml", ".yml")) or path.is_file():
        return read_yaml(path)
    if name not in preset_names():
        raise InputError(f"unknown preset {name!r}; choose one of {', '.join(preset_names())} or give a YAML file")
    return read_yaml(preset_dir() / f"{name}.yaml")


def preset_folder(name: str) -> Path:
    """The folder a preset's relative paths (its plugin files) start from: a YAML file's own folder."""
    path = Path(name)
    if name.endswith((".yaml", ".yml")) or path.is_file():
        return path.resolve().parent
    return preset_dir()


def parse_set(items: list[str]) -> dict[str, object]:
    """``["train.K=5", "physics.sigma=[0.1,0.2,0.3]"]`` → ``{"train.K": 5, …}`` (values read as YAML)."""
    out = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise InputError(f"--set {reprlib.repr(item)}: write --set section.key=value, e.g. --set train.K=5")
        try:
            out[key.strip()] = load_yaml(raw)
        except yaml.YAMLError as e:
            raise InputError(f"--set {reprlib.repr(item)}: the value is not valid YAML ({problem(e)})") from None
    return out
