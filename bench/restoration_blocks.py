"""The blocks of ``experiment_restoration.py`` (see its docstring): train every (K, T) of the plan, evaluate
on the held-out crops, record residuals; block A (wavelet θ_BC), the K = 1 supplement, block B (PnP-FB).

``exp`` is its ``Experiment``: ``plan``, ``args``, ``workdir``, ``train_dir``, ``heldout_dir``, the JSON
document ``doc`` and ``stage(name)``, which rewrites it.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from common import REPO_ROOT
from experiment_common import learned_weights, log_summary, observations, residual, save_initial, scores, train_run

from retune_cli import checkpoint as ckpt
from retune_cli.config import resolve
from retune_cli.evaluate import OBSERVATION, evaluate
from retune_cli.restore import load_model
from retune_cli.rundir import plot_runs

EVAL_SEED = 0
TRAIN_SEED = 0
BATCH = 4


def train_entry(exp, preset: str, label: str, overrides: dict) -> dict:
    """Train (or reuse, with ``--workdir``, a finished run of) ``preset`` + ``overrides`` into ``label``."""
    config = resolve(preset, overrides)
    out = exp.workdir / label
    seconds, reused, log = train_run(config, out, exp.train_dir, reuse=True)
    t = config.train
    train = {"seconds": seconds, "reused": reused, "log_seconds": log[-1][4]} | log_summary(log)
    return {"label": label, "preset": preset, "K": t.K, "T": t.T, "steps": t.steps, "train": train,
            "path": out / "theta.safetensors"}


def initial_checkpoint(exp, preset: str, label: str, overrides: dict) -> dict:
    """The preset's untrained θ at the largest (K, T) of the plan, saved as a checkpoint."""
    K, T = exp.plan.configs[-1]
    config = resolve(preset, overrides | {"train.K": K, "train.T": T})
    path = exp.workdir / label / "theta.safetensors"
    save_initial(path, config)
    return {"label": label, "preset": preset, "K": config.train.K, "T": config.train.T, "path": path}


def pnp_parameters(path: Path) -> dict[str, float]:
    params = ckpt.load(path).parameters
    return {"sigma": float(torch.exp(params["theta.log_sigma"])), "tau": float(torch.exp(params["theta.log_tau"]))}


def first_observation(exp, path: Path):
    """The observation ``evaluate`` makes of the first held-out image (noise and mask or kernel drawn from
    the seed, as ``evaluate`` draws them), with the physics of the checkpoint at ``path``."""
    return observations(load_model(path).scheme.physics, exp.heldout_dir, EVAL_SEED, count=1)[0][1]


def heldout(result, label: str, T: int, K: int | None = None) -> dict:
    out = {"T": T} | scores(result, label)
    if K is not None:
        out["iterations"] = K * T
    return out


def train_configs(exp, block: str, name: str, preset: str, base: dict, learned) -> dict:
    """Train ``preset`` at every (K, T) of the plan into the block's section; ``learned(path)`` records θ."""
    section = exp.doc[block].setdefault(name, {"preset": preset, "runs": []})
    for K, T in exp.plan.configs:
        entry = train_entry(exp, preset, f"{preset}_K{K}_T{T}", base | {"train.K": K, "train.T": T})
        entry["learned"] = learned(entry["path"])
        section["runs"].append(entry)
        exp.stage(f"{block} {preset} K{K} T{T} trained")
    return section


def _base(steps: int, crop: int) -> dict:
    return {"train.steps": steps, "train.crop": crop, "train.batch_size": BATCH, "train.seed": TRAIN_SEED}


def block_a(exp, name: str) -> None:
    preset, plan = f"{name}-wavelet", exp.plan
    base = _base(exp.args.steps_a, plan.crop_a)
    section = train_configs(exp, "A", name, preset, base, learned_weights)
    section["initial"] = initial_checkpoint(exp, preset, f"{preset}_init", base)
    if name == "inpaint":
        figure = exp.args.json.parent / "grid_inpaint_wavelet.png"
        plot_runs(figure, {f"(K,T)=({e['K']},{e['T']})": e["path"].parent for e in section["runs"]})
        exp.doc["setup"]["figure"] = str(figure.relative_to(REPO_ROOT) if figure.is_relative_to(REPO_ROOT) else figure)

    entries = section["runs"] + [section["initial"]]
    paths = [e["path"] for e in entries]
    own = evaluate(paths, data=exp.heldout_dir, seed=EVAL_SEED)
    exp.stage(f"A {preset} evaluated at own T")
    eq = evaluate(paths, data=exp.heldout_dir, T=plan.t_eq, seed=EVAL_SEED)
    _check_same_observation(own, eq)
    section["observation"] = scores(own, OBSERVATION)
    section["evaluate"] = {"own_T": own.to_json(), "T100": eq.to_json()}
    obs = first_observation(exp, paths[0])
    for e in entries:
        e["heldout"] = {"own_T": heldout(own, e["label"], e["T"]), "T100": heldout(eq, e["label"], plan.t_eq, e["K"])}
        e["residual"] = {
            "image": exp.doc["setup"]["heldout_images"][0],
            "own_T": residual(e["path"], obs, e["T"]),
            "T100": residual(e["path"], obs, plan.t_eq),
        }
    exp.stage(f"A {preset} evaluated at T={plan.t_eq}")


def supplement_k1(exp, name: str) -> None:
    """The K = 1 checkpoints of block A at T = 1000 restarts (1000 steps, as K = 10 at T = 100)."""
    section, t_k1 = exp.doc["A"][name], exp.plan.t_k1
    runs = [e for e in section["runs"] if e["K"] == 1]
    result = evaluate([e["path"] for e in runs], data=exp.heldout_dir, T=t_k1, seed=EVAL_SEED)
    assert math.isclose(scores(result, OBSERVATION)["psnr"], section["observation"]["psnr"], abs_tol=1e-9)
    section["evaluate"]["K1_T1000"] = result.to_json()
    obs = first_observation(exp, runs[0]["path"])
    for e in runs:
        e["heldout"]["T1000"] = heldout(result, e["label"], t_k1, e["K"])
        e["residual"]["T1000"] = residual(e["path"], obs, t_k1)
    exp.stage(f"A {section['preset']} K=1 evaluated at T={t_k1}")


def _check_same_observation(*results) -> None:
    first = scores(results[0], OBSERVATION)
    for r in results[1:]:
        assert math.isclose(scores(r, OBSERVATION)["psnr"], first["psnr"], abs_tol=1e-9), "observations differ"


def denoiser_run(exp, preset: str, base: dict, init: Path) -> dict:
    """The ``-denoiser`` preset at the largest (K, T), started (``train.init``) from that (σ, τ) run."""
    K, T = exp.plan.configs[-1]
    overrides = base | {"train.K": K, "train.T": T, "train.init": str(init)}
    dn = train_entry(exp, f"{preset}-denoiser", f"{preset}-denoiser_K{K}_T{T}", overrides)
    dn["init"] = str(init.parent.name)
    dn["learned"] = pnp_parameters(dn["path"])
    dn["learned"]["denoiser_tensors"] = sum(1 for k in ckpt.load(dn["path"]).parameters if k.startswith("denoiser."))
    return dn


def block_b(exp, name: str) -> None:
    preset = f"{name}-pnp"
    base = _base(exp.args.steps_b, exp.plan.crop_b)
    section = train_configs(exp, "B", name, preset, base, pnp_parameters)
    init = section["runs"][-1]["path"]  # the largest (K, T)
    section["denoiser"] = dn = denoiser_run(exp, preset, base, init)
    exp.stage(f"B {preset}-denoiser trained")
    section["initial"] = initial_checkpoint(exp, preset, f"{preset}_init", base)
    section["initial"]["learned"] = pnp_parameters(section["initial"]["path"])

    wavelet = next(e for e in exp.doc["A"][name]["runs"] if (e["K"], e["T"]) == exp.plan.configs[-1])
    equal = ckpt.load(wavelet["path"]).config.physics == ckpt.load(init).config.physics
    section["wavelet"] = {
        "label": wavelet["label"],
        "physics_equal": equal,
        "blockA_own_T_psnr": wavelet["heldout"]["own_T"]["psnr"],
        "blockA_own_T_ssim": wavelet["heldout"]["own_T"]["ssim"],
    }
    entries = section["runs"] + [dn, section["initial"]]
    paths = [e["path"] for e in entries] + ([wavelet["path"]] if equal else [])
    own = evaluate(paths, data=exp.heldout_dir, seed=EVAL_SEED)
    section["observation"] = scores(own, OBSERVATION)
    section["observation_equals_block_A"] = math.isclose(
        section["observation"]["psnr"], exp.doc["A"][name]["observation"]["psnr"], abs_tol=1e-9
    )
    section["evaluate"] = {"own_T": own.to_json()}
    if equal:
        section["wavelet"]["heldout"] = {"own_T": heldout(own, wavelet["label"], wavelet["T"])}
    obs = first_observation(exp, paths[0])
    for e in entries:
        e["heldout"] = {"own_T": heldout(own, e["label"], e["T"])}
        e["residual"] = {"image": exp.doc["setup"]["heldout_images"][0], "own_T": residual(e["path"], obs, e["T"])}
    exp.stage(f"B {preset} evaluated at own T")
