"""Presets and ``--set key=value`` overrides → a typed, validated :class:`Config` (the engine, torch, is
imported by the checks that need the registries: an unknown preset is refused before)."""

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
from .components import composed_class, load_plugins, physics_class, plugin_specs, prior_class
from .errors import InputError
from .limits import FLOAT32_MAX
from .yamlfiles import MAX_YAML_BYTES, load_preset, load_yaml, preset_folder


@dataclass
class PhysicsConfig:
    """The built-in physics' options are fields; a plugin physics' declared ones live in ``options`` (flat
    keys in YAML, read as attributes too: ``config.physics.gain``)."""

    name: str = "denoise"
    sigma: list[float] = field(default_factory=lambda: [0.10, 0.25, 0.50])
    keep: float = 0.1  # inpaint: fraction of pixels kept (physics.mask random)
    mask: str = "random"  # inpaint: random | strokes | text | blocks, drawn per image
    masks: str = ""  # inpaint: a folder of mask images (white = kept), one drawn per image, cut to the images
    blur_width: int = 25  # deblur: width of the uniform kernels
    kernel: str = "uniform-channel"  # deblur: uniform-channel | gaussian | motion (drawn per image) | a .npy/PSF file
    kernel_size: int = 25  # deblur: side of the gaussian/motion kernels
    boundary: str = "circular"  # deblur: circular | reflect | replicate (how the image extends past its edges) | valid
    # (none assumed: y is the (H−h+1)×(W−w+1) pixels whose blur window lies inside the image; fb/pd schemes)
    factor: int = 4  # sr: downsampling factor
    filter: str = "bicubic"  # sr: anti-aliasing filter, bicubic | gaussian
    factory: str = ""  # python: "module:function" returning a deepinv LinearPhysics for an image shape
    options: dict[str, object] = field(default_factory=dict)  # a plugin physics' declared options

    def __getattr__(self, name: str):
        options = self.__dict__.get("options") or {}
        if name in options:
            return options[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")


@dataclass
class ModelConfig:
    """``prior`` × ``scheme``, and the options they declare: the built-in wavelet and PnP priors' and
    forward-backward's are fields; any other component's live in ``options`` (flat keys in YAML)."""

    prior: str = "wavelet"  # a registered prior: wavelet | pnp | tv | wavelet-union | filters | a plugin's
    scheme: str = "fb"  # fb | drs | hqs | pd, as the prior allows
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
    options: dict[str, object] = field(default_factory=dict)  # other components' declared options


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
    plugins: list[str] = field(default_factory=list)  # .py files (absolute once resolved) or module names
    physics: PhysicsConfig = field(default_factory=PhysicsConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_yaml(self) -> str:
        data = dataclasses.asdict(self)
        for section in ("physics", "model"):
            data[section] |= data[section].pop("options")  # flat, as a preset writes them
        if not data["plugins"]:
            del data["plugins"]
        return yaml.safe_dump(data, sort_keys=False)


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
    if kind in (str, bool) and isinstance(value, kind):
        return value
    kind_name = "an integer" if kind is int else "a " + kind.__name__
    raise InputError(f"{key} must be {kind_name}, not {reprlib.repr(value)}")


def _declared(section: str, values: dict, fields: set[str], declared: dict, source: str) -> dict[str, object]:
    """Pop from ``values`` the keys that are not fields of the section (flat, or nested under ``options``) and
    check them against a component's ``declared`` options (key → default, whose type is the key's)."""
    nested = values.pop("options", None) or {}
    if not isinstance(nested, dict):
        raise InputError(f"{source}: {section}.options must be a mapping")
    extra = dict(nested) | {k: values.pop(k) for k in list(values) if k not in fields}  # a flat key wins
    for key in extra:
        if key not in declared or key in fields:
            known = ", ".join(sorted(fields - {"options"} | set(declared)))
            raise InputError(f"{source}: unknown key {section}.{key}; known: {known}")
    return {k: _coerce(v, type(declared[k]), f"{section}.{k}") for k, v in extra.items()}


def _model_options(values: dict, source: str) -> dict:
    """``model`` keys of the chosen prior and scheme that are not :class:`ModelConfig` fields → ``options``
    (see :func:`_declared`); ``name`` is the old spelling of ``prior``."""
    values = dict(values)
    if "name" in values and "prior" not in values:
        values["prior"] = values.pop("name")
    try:
        prior = prior_class(values.get("prior", ModelConfig.prior))
        scheme = composed_class(values.get("scheme", ModelConfig.scheme), prior.name)
    except ValueError as e:
        raise InputError(f"{source}: {e}") from None
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    values["options"] = _declared("model", values, fields, {**scheme.options, **prior.options}, source)
    return values


def _physics_options(values: dict, source: str) -> dict:
    """``physics`` keys that are not :class:`PhysicsConfig` fields → ``options``, checked against what the
    physics declares (a plugin's ``options`` dict, key → default), every declared key given its default."""
    values = dict(values)
    fields = {f.name for f in dataclasses.fields(PhysicsConfig)}
    try:
        declared = physics_class(values.get("name", PhysicsConfig.name)).options
    except (ValueError, TypeError) as e:  # an unknown name: validate() names it, unless keys depend on it
        if set(values) - fields:
            raise InputError(f"{source}: {e}") from None
        declared = ()
    declared = {k: v for k, v in declared.items() if k not in fields} if isinstance(declared, dict) else {}
    values["options"] = declared | _declared("physics", values, fields, declared, source)
    return values


def _build(data: dict, source: str) -> Config:
    if not isinstance(data, dict):
        raise InputError(f"{source}: a config is a YAML mapping with sections physics, model, train")
    unknown = set(data) - {"preset", "description", "plugins", *SECTIONS}
    if unknown:
        raise InputError(
            f"{source}: unknown key {sorted(unknown)[0]!r}; known: preset, description, plugins, {', '.join(SECTIONS)}"
        )
    plugins = plugin_specs(data.get("plugins"), source, trust_code=True)  # the callers checked the trust
    load_plugins(plugins)
    sections = {}
    for name, cls in SECTIONS.items():
        values = data.get(name) or {}
        if not isinstance(values, dict):
            raise InputError(f"{source}: section {name!r} must be a mapping")
        if cls is ModelConfig:
            values = _model_options(values, source)
        elif cls is PhysicsConfig:
            values = _physics_options(values, source)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        for key in values:
            if key not in fields:
                raise InputError(f"{source}: unknown key {name}.{key}; known: {', '.join(fields)}")
        hints = typing.get_type_hints(cls)
        sections[name] = cls(**{k: v if k == "options" else _coerce(v, hints[k], f"{name}.{k}")
                                 for k, v in values.items()})
    config = Config(str(data.get("preset", "custom")), str(data.get("description", "")), plugins, **sections)
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


def resolve(preset: str, overrides: dict[str, object] | None = None, trust_code: bool = False) -> Config:
    """Preset (name or file) + overrides → validated config; its ``plugins`` (files relative to the preset
    file's folder) are imported, with ``trust_code`` only."""
    data = load_preset(preset)
    if not isinstance(data, dict):
        raise InputError(f"{preset}: a config is a YAML mapping with sections physics, model, train")
    data.setdefault("preset", Path(preset).stem if preset.endswith((".yaml", ".yml")) else preset)
    data["plugins"] = plugin_specs(data.get("plugins"), preset, preset_folder(preset), trust_code)
    config = _build(apply_overrides(data, overrides or {}), preset)
    check_overrides(config, overrides or {})
    return config


def from_yaml(text: str, source: str, trust_code: bool = False) -> Config:
    """A config saved with :meth:`Config.to_yaml`; one that runs code named in it (``plugins``, a
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
    if isinstance(data, dict):
        data["plugins"] = plugin_specs(data.get("plugins"), source, trust_code=trust_code)
    from .core.operators import PHYSICS  # the built-in physics, registered (imports the engine)

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
