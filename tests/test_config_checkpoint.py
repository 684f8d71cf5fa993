"""Presets, --set overrides and validation; checkpoint save/load and its refusals."""

from __future__ import annotations

import dataclasses
import math
import os
import stat

import pytest
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import retune_cli
from retune_cli import checkpoint as ckpt
from retune_cli.config import apply_overrides, for_resume, from_yaml, resolve
from retune_cli.errors import InputError
from retune_cli.models import build_scheme
from retune_cli.restore import load_model
from retune_cli.yamlfiles import parse_set, preset_dir, preset_names

PRESETS = ["denoise-wavelet-b", "denoise-wavelet-bc"]


# --------------------------------------------------------------------------- presets and overrides


def test_builtin_presets_listed():
    assert set(PRESETS) <= set(preset_names())


@pytest.mark.parametrize("name", PRESETS)
def test_presets_resolve(name):
    config = resolve(name)
    raw = yaml.safe_load((preset_dir() / f"{name}.yaml").read_text())
    assert config.preset == name
    assert config.physics.sigma == raw["physics"]["sigma"]
    assert config.model.weights == raw["model"]["weights"]
    train = raw["train"]
    assert (config.train.K, config.train.T, config.train.lr) == (train["K"], train["T"], train["lr"])
    assert config.train.epochs is None
    # the resolved YAML is a fixed point of from_yaml
    assert from_yaml(config.to_yaml(), "x") == config


def test_preset_from_a_yaml_file(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("model:\n  weights: bands-channels\ntrain:\n  K: 3\n")
    config = resolve(str(path))
    assert config.preset == "mine"
    assert config.model.weights == "bands-channels" and config.train.K == 3
    assert config.train.T == type(config.train)().T  # the rest from the defaults


def test_parse_set_reads_values_as_yaml():
    out = parse_set(["train.K=5", "physics.sigma=[0.1, 0.2, 0.3]", "model.weights=bands-channels", "train.lr=0.001",
                     "train.epochs=null", " model.levels = 3"])
    assert out == {"train.K": 5, "physics.sigma": [0.1, 0.2, 0.3], "model.weights": "bands-channels",
                   "train.lr": 0.001, "train.epochs": None, "model.levels": 3}
    assert isinstance(out["train.lr"], float)


def test_exponent_notation_is_a_float(tmp_path):
    assert resolve("denoise-wavelet-b", parse_set(["train.lr=1e-3"])).train.lr == 0.001
    path = tmp_path / "lr.yaml"
    path.write_text("train:\n  lr: 5e-5\n")
    assert resolve(str(path)).train.lr == 5e-5


@pytest.mark.parametrize("item", ["bad", "=5", "train.K", "train.K=[1,"])
def test_parse_set_rejects_malformed_items(item):
    with pytest.raises(InputError, match="--set"):
        parse_set([item])


def test_apply_overrides_is_a_copy():
    data = {"train": {"K": 1}, "model": {"weights": "bands"}}
    out = apply_overrides(data, {"train.K": 7, "physics.name": "denoise", "description": "x"})
    assert out == {"train": {"K": 7}, "model": {"weights": "bands"}, "physics": {"name": "denoise"}, "description": "x"}
    assert data == {"train": {"K": 1}, "model": {"weights": "bands"}}


def test_resolve_with_overrides():
    config = resolve("denoise-wavelet-b", parse_set(["train.K=3", "train.T=4", "physics.sigma=0.2", "train.lr=1"]))
    assert (config.train.K, config.train.T) == (3, 4)
    assert config.physics.sigma == [0.2]  # a scalar becomes a one-element list
    assert config.train.lr == 1.0 and isinstance(config.train.lr, float)


@pytest.mark.parametrize(
    ("overrides", "names"),
    [
        ({"train.Kay": 3}, "train.Kay"),
        ({"physics.sgima": [0.1]}, "physics.sgima"),
        ({"training.K": 3}, "training"),
        ({"K": 3}, "--set K"),
        ({"train.K": "abc"}, "train.K"),
        ({"train.K": 2.5}, "train.K"),
        ({"train.K": True}, "train.K"),
        ({"train.lr": "fast"}, "train.lr"),
        ({"physics.sigma": ["a", 0.1, 0.1]}, "physics.sigma"),
        ({"model.weights": 3}, "model.weights"),
        ({"train.K": 0}, "train.K"),
        ({"train.T": -1}, "train.T"),
        ({"train.steps": 0}, "train.steps"),
        ({"train.batch_size": 0}, "train.batch_size"),
        ({"train.epochs": 0}, "train.epochs"),
        ({"train.lr": 0}, "train.lr"),
        ({"train.lr": -0.1}, "train.lr"),
        ({"train.lr": math.nan}, "train.lr"),
        ({"train.lr": math.inf}, "train.lr"),
        ({"physics.sigma": [0.1, -0.2, 0.3]}, "physics.sigma"),
        ({"physics.sigma": [math.nan, 0.1, 0.1]}, "physics.sigma"),
        ({"physics.sigma": []}, "physics.sigma"),
        ({"physics.name": "telepathy"}, "physics.name"),
        ({"physics.sigma": [0.1, 0.2]}, "physics.sigma"),  # one σ, or one per channel
        ({"physics.sigma": [0.1, 0.2, 0.3, 0.4]}, "physics.sigma"),
        ({"model.weights": "scales"}, "model.weights"),
        ({"model.step_rule": "fast"}, "model.step_rule"),
        ({"model.levels": 0}, "model.levels"),
        ({"model.levels": 9}, "model.levels"),
        ({"model.init_lambda": 0}, "model.init_lambda"),
        ({"model.wavelet": "bior2.2"}, "model.wavelet"),
        ({"model.wavelet": "nope"}, "model.wavelet"),
        ({"train.gradient": "deq-typo"}, "train.gradient"),
        ({"train.crop": 8}, "train.crop"),
    ],
)
def test_bad_values_raise_input_error_naming_the_key(overrides, names):
    with pytest.raises(InputError) as info:
        resolve("denoise-wavelet-b", overrides)
    assert names in str(info.value)
    assert "\n" not in str(info.value)


def test_nan_from_the_command_line():
    with pytest.raises(InputError, match="train.lr must be a finite number"):
        resolve("denoise-wavelet-b", parse_set(["train.lr=.nan"]))


def test_unknown_preset():
    with pytest.raises(InputError, match="unknown preset 'denoise-wavelet-x'") as info:
        resolve("denoise-wavelet-x")
    assert "denoise-wavelet-b" in str(info.value)  # lists the choices
    with pytest.raises(InputError, match="does not exist"):
        resolve("missing-file.yaml")


def test_yaml_syntax_error_names_the_file_and_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("train:\n  K: [1, 2\n  T: 3\n")
    with pytest.raises(InputError) as info:
        resolve(str(path))
    message = str(info.value)
    assert str(path) in message and "line" in message and "not valid YAML" in message


def test_unknown_key_in_a_preset_file_names_the_file(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text("train:\n  KK: 3\n")
    with pytest.raises(InputError, match="train.KK") as info:
        resolve(str(path))
    assert str(path) in str(info.value)
    path.write_text("optimizer: {}\n")
    with pytest.raises(InputError, match="'optimizer'"):
        resolve(str(path))


def test_override_into_an_empty_section_of_a_preset_file(tmp_path):
    path = tmp_path / "empty_section.yaml"
    path.write_text("physics:\n  name: denoise\ntrain:\n")
    assert resolve(str(path), {"train.K": 3}).train.K == 3


def test_preset_file_that_is_not_a_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- train\n- model\n")
    with pytest.raises(InputError, match="mapping"):
        resolve(str(path))


def test_for_resume_only_changes_the_length():
    config = resolve("denoise-wavelet-b", {"train.steps": 3})
    longer = for_resume(config, {"train.steps": 9}, "ck")
    assert longer.train.steps == 9
    assert dataclasses.replace(longer, train=dataclasses.replace(longer.train, steps=3)) == config
    with pytest.raises(InputError, match="train.K"):
        for_resume(config, {"train.K": 4}, "ck")


# --------------------------------------------------------------------------- checkpoints

METADATA_KEYS = {"format", "format_version", "retune_version", "config", "K", "T", "step", "train_psnr"}


def _saved(tmp_path, preset="denoise-wavelet-b", **overrides):
    config = resolve(preset, {"train.K": 3, "train.T": 4, **overrides})
    scheme = build_scheme(config)
    with torch.no_grad():
        scheme.theta.log_lambda.copy_(torch.randn_like(scheme.theta.log_lambda))
        scheme.theta.log_Lambda.copy_(torch.randn_like(scheme.theta.log_Lambda))
    path = tmp_path / "run" / "theta.safetensors"
    optimizer = {"log_lambda.exp_avg": torch.randn(4), "log_lambda.step": torch.tensor(7.0)}
    ckpt.save(path, config, ckpt.learned_parameters(scheme), 17, 23.456789, optimizer)
    return path, config, scheme, optimizer


@pytest.mark.parametrize("preset", PRESETS)
def test_checkpoint_round_trip(tmp_path, preset):
    path, config, scheme, optimizer = _saved(tmp_path, preset)
    loaded = ckpt.load(path)
    assert loaded.config == config
    assert loaded.step == 17 and loaded.train_psnr == pytest.approx(23.456789, abs=1e-6)
    expected = ckpt.learned_parameters(scheme)
    assert loaded.parameters.keys() == expected.keys() == {"theta.log_lambda", "theta.log_Lambda"}
    for k, v in expected.items():
        assert torch.equal(loaded.parameters[k], v)
    assert loaded.optimizer.keys() == optimizer.keys()
    for k, v in optimizer.items():
        assert torch.equal(loaded.optimizer[k], v)
    fresh = build_scheme(loaded.config)
    ckpt.load_parameters(fresh, loaded)
    for k, v in ckpt.learned_parameters(fresh).items():
        assert torch.equal(v, expected[k])


def test_checkpoint_metadata_and_plain_safetensors(tmp_path):
    path, config, scheme, _ = _saved(tmp_path)
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    assert METADATA_KEYS <= set(meta)
    assert meta["format"] == "retune-checkpoint"
    assert meta["format_version"] == ckpt.FORMAT_VERSION
    assert meta["retune_version"] == retune_cli.__version__
    assert (meta["K"], meta["T"], meta["step"]) == ("3", "4", "17")
    assert float(meta["train_psnr"]) == pytest.approx(23.456789, abs=1e-6)
    assert from_yaml(meta["config"], "meta") == config
    assert yaml.safe_load(meta["config"])["train"]["K"] == 3
    tensors = load_file(str(path))  # plain safetensors, no retune needed
    assert torch.equal(tensors["theta.log_lambda"], scheme.theta.log_lambda.detach())


def test_atomic_write_leaves_no_temporary_files(tmp_path):
    path, *_ = _saved(tmp_path)
    _saved(tmp_path)  # overwrite
    assert sorted(p.name for p in path.parent.iterdir()) == ["theta.safetensors"]


def test_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path, config, scheme, _ = _saved(tmp_path)
    before = path.read_bytes()

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(InputError, match="cannot write .*theta.safetensors: disk full"):
        ckpt.save(path, config, ckpt.learned_parameters(build_scheme(config)), 99, 0.0)
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["theta.safetensors"]


def test_checkpoint_file_mode_follows_the_umask(tmp_path):
    path, *_ = _saved(tmp_path)
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    assert stat.S_IMODE(path.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode)


def test_refuses_a_missing_file(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        ckpt.load(tmp_path / "nope.safetensors")


@pytest.mark.parametrize("content", [b"", b"hello\n" * 20, b"\x00" * 7, b"PK\x03\x04 zip?"])
def test_refuses_a_non_safetensors_file(tmp_path, content):
    path = tmp_path / "theta.safetensors"
    path.write_bytes(content)
    with pytest.raises(InputError, match="not a readable safetensors file") as info:
        ckpt.load(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("metadata", [None, {"format": "retune-checkpoint"}, {"config": "x: 1", "format": "other"}])
def test_refuses_safetensors_without_retune_metadata(tmp_path, metadata):
    path = tmp_path / "other.safetensors"
    save_file({"theta.log_lambda": torch.zeros(4)}, str(path), metadata=metadata)
    with pytest.raises(InputError, match="not a retune checkpoint"):
        ckpt.load(path)


def test_refuses_another_format_version(tmp_path):
    path, *_ = _saved(tmp_path)
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    save_file(load_file(str(path)), str(path), metadata=meta | {"format_version": "999"})
    with pytest.raises(InputError, match="format 999"):
        ckpt.load(path)


@pytest.mark.parametrize("keep", [0.5, 0.9, 0.99, 8, 20])
def test_refuses_a_truncated_checkpoint(tmp_path, keep):
    path, *_ = _saved(tmp_path)
    data = path.read_bytes()
    n = int(len(data) * keep) if isinstance(keep, float) else keep
    path.write_bytes(data[:n])
    with pytest.raises(InputError, match="not a readable safetensors file"):
        ckpt.load(path)


def test_refuses_tensors_that_do_not_match_the_config(tmp_path):
    """A bands-channels θ saved under a bands config."""
    bands = resolve("denoise-wavelet-b")
    wrong = ckpt.learned_parameters(build_scheme(resolve("denoise-wavelet-bc")))
    path = tmp_path / "mismatch.safetensors"
    ckpt.save(path, bands, wrong, 1, 0.0)
    with pytest.raises(InputError, match="do not match its config") as info:
        load_model(path)
    assert "theta.log_Lambda" in str(info.value) and str(path) in str(info.value)
    missing = {"theta.log_lambda": wrong["theta.log_lambda"]}
    ckpt.save(path, bands, missing, 1, 0.0)
    with pytest.raises(InputError, match="missing"):
        load_model(path)
    extra = ckpt.learned_parameters(build_scheme(bands)) | {"theta.extra": torch.zeros(1)}
    ckpt.save(path, bands, extra, 1, 0.0)
    with pytest.raises(InputError, match="unexpected"):
        load_model(path)


def test_refuses_non_finite_parameters(tmp_path):
    config = resolve("denoise-wavelet-b")
    params = ckpt.learned_parameters(build_scheme(config))
    params["theta.log_lambda"] = torch.tensor([0.0, math.inf, 0.0, 0.0])
    path = tmp_path / "inf.safetensors"
    ckpt.save(path, config, params, 1, 0.0)
    with pytest.raises(InputError, match="non-finite"):
        load_model(path)


def test_refuses_an_invalid_stored_config(tmp_path):
    path, *_ = _saved(tmp_path)
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    bad = yaml.safe_load(meta["config"])
    bad["train"]["K"] = 0
    save_file(load_file(str(path)), str(path), metadata=meta | {"config": yaml.safe_dump(bad)})
    with pytest.raises(InputError, match="train.K"):
        ckpt.load(path)
