"""Presets and ``--set key=value`` overrides → a typed, validated :class:`Config`."""

from __future__ import annotations

import dataclasses
import math
import reprlib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .checks import check_overrides, validate
from .core.operators import PHYSICS
from .errors import InputError
from .limits import FLOAT32_MAX
from .yamlfiles import MAX_YAML_BYTES, load_preset, load_yaml


@dataclass
class PhysicsConfig:
    name: str = "denoise"
    sigma: list[float] = field(default_factory=lambda: [0.10, 0.25, 0.50])
    keep: float = 0.1  # inpaint: fraction of pixels kept
    blur_width: int = 25  # deblur: width of the uniform kernels
    kernel: str = "uniform-channel"  # deblur: uniform-channel | gaussian | motion (drawn per image)
    kernel_size: int = 25  # deblur: side of the gaussian/motion kernels
    factor: int = 4  # sr: downsampling factor
    filter: str = "bicubic"  # sr: anti-aliasing filter, bicubic | gaussian
    factory: str = ""  # python: "module:function" returning a deepinv LinearPhysics for an image shape


@dataclass
class ModelConfig:
    name: str = "wavelet"
    scheme: str = "fb"  # wavelet: fb | drs; pnp: fb | hqs
    wavelet: str = "db4"
    levels: int = 4
    weights: str = "bands"
    init: str = "noise"  # wavelet θ: noise (universal thresholds from physics.sigma) | paper (init_lambda); not PnP
    init_lambda: float = 0.05  # model.init paper: λ_j = init_lambda, Λ = 1
    step_rule: str = "optimal"
    denoiser: str = "builtin"  # pnp: builtin | download | path to .pth/.safetensors
    learn: str = "parameters"  # pnp: parameters (σ, τ) | denoiser (its weights)
    init_sigma: float = 0.2  # pnp: initial σ of the denoiser
    init_tau: float = 0.5  # pnp: initial step τ


@dataclass
class TrainConfig:
    K: int = 10
    T: int = 10
    gradient: str = "retune"  # retune | unrolled | jfb | deq
    tol: float = 1e-4  # jfb/deq: restarts until the relative residual is below this
    max_restarts: int = 200  # jfb/deq: at most this many restarts
    adjoint_solver: str = "gmres"  # deq: gmres | fixed-point
    adjoint_tol: float = 1e-6  # deq: relative residual of the adjoint solve
    adjoint_max_iter: int = 200
    accelerate: str = "none"  # graph-free restarts (retune's T − 1, jfb/deq's): none | anderson
    steps: int = 100
    epochs: int | None = None
    batch_size: int = 4
    crop: int = 128
    lr: float = 0.05
    seed: int = 0
    checkpoint_every: int = 25
    val_every: int = 25  # with --val DIR: validation PSNR every this many steps
    check_gradient_every: int = 0
    clip_grad_norm: float = 0.0  # 0: no clipping
    init: str | None = None  # checkpoint whose θ (and denoiser weights) start the run


@dataclass
class Config:
    preset: str = "custom"
    description: str = ""
    physics: PhysicsConfig = field(default_factory=PhysicsConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_yaml(self) -> str:
        return yaml.safe_dump(dataclasses.asdict(self), sort_keys=False)


SECTIONS = {"physics": PhysicsConfig, "model": ModelConfig, "train": TrainConfig}


def _coerce(value, kind, key: str):
    """``value`` as the dataclass field type ``kind``, or an :class:`InputError` naming ``key``."""
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        kind = next(a for a in typing.get_args(kind) if a is not type(None))
        origin = typing.get_origin(kind)
    if origin is list:
        items = value if isinstance(value, list) else [value]
        return [_coerce(v, typing.get_args(kind)[0], key) for v in items]
    if kind is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind in (int, float) and isinstance(value, str):
        try:
            value = kind(value)  # YAML reads 1e-3 (no dot) as a string
        except ValueError:
            pass
    if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            value = float(value)
        except OverflowError:  # an integer beyond any float
            value = math.inf
        if not abs(value) <= FLOAT32_MAX:
            raise InputError(f"{key} must be a finite number within float32's range (±3.4e38), not {value}")
        return value
    if kind is str and isinstance(value, str):
        return value
    kind_name = "an integer" if kind is int else "a " + kind.__name__
    raise InputError(f"{key} must be {kind_name}, not {reprlib.repr(value)}")


def _build(data: dict, source: str) -> Config:
    if not isinstance(data, dict):
        raise InputError(f"{source}: a config is a YAML mapping with sections physics, model, train")
    unknown = set(data) - {"preset", "description", *SECTIONS}
    if unknown:
        raise InputError(
            f"{source}: unknown key {sorted(unknown)[0]!r}; known: preset, description, {', '.join(SECTIONS)}"
        )
    sections = {}
    for name, cls in SECTIONS.items():
        values = data.get(name) or {}
        if not isinstance(values, dict):
            raise InputError(f"{source}: section {name!r} must be a mapping")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        for key in values:
            if key not in fields:
                raise InputError(f"{source}: unknown key {name}.{key}; known: {', '.join(fields)}")
        hints = typing.get_type_hints(cls)
        sections[name] = cls(**{k: _coerce(v, hints[k], f"{name}.{k}") for k, v in values.items()})
    config = Config(str(data.get("preset", "custom")), str(data.get("description", "")), **sections)
    validate(config)
    return config


def apply_overrides(data: dict, overrides: dict[str, object]) -> dict:
    """Set dotted keys ``section.key`` in a raw config mapping (a copy)."""
    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    for section in {key.partition(".")[0] for key in overrides} & set(SECTIONS):
        if data.get(section) is None:
            data[section] = {}
    for key, value in overrides.items():
        section, dot, name = key.partition(".")
        if not dot:
            if section not in ("preset", "description"):
                raise InputError(f"--set {key}: use section.key, with section one of {', '.join(SECTIONS)}")
            data[section] = value
            continue
        if section not in SECTIONS:
            raise InputError(f"--set {key}: unknown section {section!r}; use one of {', '.join(SECTIONS)}")
        if not isinstance(data[section], dict):
            raise InputError(f"--set {key}: section {section!r} of the preset is not a mapping")
        data[section][name] = value
    return data


def resolve(preset: str, overrides: dict[str, object] | None = None) -> Config:
    """Preset (name or file) + overrides → validated config."""
    data = load_preset(preset)
    if not isinstance(data, dict):
        raise InputError(f"{preset}: a config is a YAML mapping with sections physics, model, train")
    data.setdefault("preset", Path(preset).stem if preset.endswith((".yaml", ".yml")) else preset)
    config = _build(apply_overrides(data, overrides or {}), preset)
    check_overrides(config, overrides or {})
    return config


def from_yaml(text: str, source: str, trust_code: bool = False) -> Config:
    """A config saved with :meth:`Config.to_yaml`; one whose physics runs code named in it (a
    ``physics.factory``) only with ``trust_code``; one without ``model.init`` (older) gets ``paper``."""
    if len(text) > MAX_YAML_BYTES:
        raise InputError(f"{source}: its stored config is larger than {MAX_YAML_BYTES // 2**20} MB")
    try:
        data = load_yaml(text)
    except yaml.YAMLError:
        raise InputError(f"{source}: its stored config is not valid YAML") from None
    physics = data.get("physics") if isinstance(data, dict) else None
    name = physics.get("name") if isinstance(physics, dict) else None
    if isinstance(data, dict) and isinstance(data.get("model"), dict):
        data["model"].setdefault("init", "paper")  # stored before model.init existed: the paper's start
    if not trust_code and isinstance(name, str) and name in PHYSICS and PHYSICS[name].runs_user_code:
        factory = reprlib.repr(physics.get("factory"))
        raise InputError(f"{source} runs Python code (physics.factory {factory}); pass --trust-code if you trust it")
    return _build(data, source)


def with_overrides(config: Config, overrides: dict[str, object], source: str) -> Config:
    """A validated copy of ``config`` with dotted keys set."""
    changed = _build(apply_overrides(dataclasses.asdict(config), overrides), source)
    check_overrides(changed, overrides)
    return changed


RESUMABLE = ("train.steps", "train.epochs")


def for_resume(config: Config, overrides: dict[str, object], source: str) -> Config:
    """A checkpoint's config with only the length of training changed (``--steps``/``--epochs``)."""
    changed = sorted(k for k in overrides if k not in RESUMABLE)
    if changed:
        raise InputError(f"--resume continues a run as configured; only --steps/--epochs may change, not {changed[0]}")
    return with_overrides(config, overrides, source)
