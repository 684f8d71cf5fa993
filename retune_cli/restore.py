"""Restore workflow: run a checkpoint's restarted scheme on one degraded image."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from . import checkpoint as ckpt
from .config import TrainConfig
from .core.hypergrad import GRADIENT_MODES, Solution, restore
from .core.physics import Observation, Params, UserOperator
from .core.schemes import NoValidStep
from .errors import InputError
from .images import read_array, read_image, read_mask
from .limits import check_cost
from .models import build_scheme
from .noise_level import NoiseScaling, rescale
from .values import check_budget, keep_warning

MAX_RESTARTS_WITH_TOL = 1000
KERNEL_SUM_TOL = 1e-3


@dataclass(frozen=True)
class Model:
    """A checkpoint and the scheme it describes, with θ loaded."""

    checkpoint: ckpt.Checkpoint
    scheme: torch.nn.Module
    noise: NoiseScaling | None = None  # moved to another noise level than training's (--sigma)

    @property
    def config(self):
        return self.checkpoint.config

    @property
    def device(self) -> torch.device:
        return next(self.scheme.parameters()).device


def load_model(path: Path | str, device: torch.device | str = "cpu", trust_code: bool = False,
               sigma: float | Sequence[float] | None = None) -> Model:
    """A checkpoint's scheme with θ loaded; ``sigma`` (1 or 3 noise levels): moved to that noise
    level, its thresholds scaled by ``sigma/σ_train`` (:mod:`.noise_level`)."""
    checkpoint = ckpt.load(path, trust_code)
    scheme = build_scheme(checkpoint.config, device)
    ckpt.load_parameters(scheme, checkpoint)
    noise = None if sigma is None else rescale(scheme, checkpoint.config.physics.sigma, sigma, str(checkpoint.path))
    scheme.eval()
    return Model(checkpoint, scheme, noise)


def restart_budget(t: TrainConfig, T: int | None = None, tol: float | None = None) -> tuple[int, float]:
    """``(max restarts, tolerance)``: ``T`` restarts, or up to ``T`` (default 1000) restarts until the
    relative residual is ≤ ``tol``. With neither, what training did: the checkpoint's T, or for a
    checkpoint trained at the fixed point (jfb, deq) restarts to its ``train.tol`` (at most its
    ``train.max_restarts``). A ``T`` under 1 or a ``tol`` not finite and ≥ 0 is refused."""
    check_budget(T, tol)
    if tol is None and T is None and GRADIENT_MODES[t.gradient].equilibrium:
        return t.max_restarts, t.tol
    if tol is None:
        return (T or t.T), 0.0
    return (T or MAX_RESTARTS_WITH_TOL), tol


def run(model: Model, obs: Observation, T: int | None = None, tol: float | None = None,
        accelerate: str | None = None, on_restart: Callable[[int, int], None] | None = None) -> Solution:
    """Restore an observed batch ``(N, 3, H, W)`` with the model's K and the restart budget, the
    restarts accelerated as ``accelerate`` says (default: as the model trained), ``on_restart(t, max)``
    after each; a θ that leaves the scheme no valid step, or gives non-finite values, is refused
    naming the checkpoint."""
    max_restarts, tolerance = restart_budget(model.config.train, T, tol)
    K, source = model.config.train.K, model.checkpoint.path
    check_cost(f"--T {max_restarts} with the K = {K} of {source}: K × T", K * max_restarts)
    try:
        report = None if on_restart is None else (lambda t: on_restart(t, max_restarts))
        solution = restore(model.scheme, obs, K, max_restarts, tolerance,
                           accelerate=accelerate or model.config.train.accelerate, on_restart=report)
    except NoValidStep as e:  # θ so extreme that no valid step exists
        raise InputError(f"{source}: its θ leaves the scheme no valid step ({e})") from None
    except ValueError as e:  # what the physics or prior refuses (a missing or unfit operator)
        raise InputError(f"{source}: {e}") from None
    if not torch.all(torch.isfinite(solution.x)):
        raise InputError(f"{source}: restoring with its θ gives non-finite values; θ is out of range")
    return solution


@dataclass(frozen=True)
class RestoreResult:
    restored: torch.Tensor  # (3, H, W)
    observation: torch.Tensor  # (3, H, W): the input, or the simulated degradation
    restarts: int
    residual: float
    psnr: float | None  # against the clean input (--simulate) or the --reference image
    psnr_observation: float | None
    ssim: float | None = None
    ssim_observation: float | None = None


def check_fits(model: Model, shape: torch.Size, image: Path | str) -> None:
    """Refuse an image that the model's physics cannot observe (e.g. smaller than its blur kernel)."""
    try:
        model.scheme.physics.check_fits(shape)
    except ValueError as e:
        raise InputError(f"{image}: {e}") from None


def _read_operator(path: Path, spec: UserOperator) -> torch.Tensor:
    """A user's operator file: a mask (binary, :func:`~.images.read_mask`), an image or an array."""
    flag = f"--{spec.flag}"
    if spec.flag == "mask":
        return read_mask(path, flag)
    return read_image(path, flag) if spec.reads == "image" else torch.from_numpy(read_array(path, flag))


def _normalized(kernel: torch.Tensor) -> torch.Tensor:
    """``kernel`` divided by its sum (per channel for ``(C, h, w)``); a zero sum is left to be refused."""
    sums = kernel.sum(dim=(-2, -1) if kernel.dim() > 2 else tuple(range(kernel.dim())), keepdim=True)
    return kernel / torch.where(sums == 0, torch.ones_like(sums), sums)


def _check_kernel_sum(kernel: torch.Tensor, path: Path) -> None:
    """A blur keeps the mean brightness: each channel's kernel ``(1, 3, h, w)`` sums to 1 (± 1e-3)."""
    sums = kernel.double().sum(dim=(-2, -1)).flatten()
    if torch.any((sums - 1).abs() > KERNEL_SUM_TOL):
        found = ", ".join(f"{s:.4g}" for s in sums.tolist())
        fix = "; --normalize-kernel divides it by its sum" if torch.all(sums != 0) else ""
        raise InputError(f"--kernel {path}: it sums to {found} (per channel), not 1, so it changes the "
                         f"brightness{fix}")


def user_operator(model: Model, shape: torch.Size, operators: dict[str, Path | None],
                  normalize_kernel: bool = False, on_warning: Callable[[str], None] | None = None) -> Params | None:
    """The physics' parameters from a user's file (``{"mask": path, "kernel": path}``, as the flags),
    or None when none is given; the physics says which flag it takes and how it reads it. With
    ``normalize_kernel`` a kernel is divided by its sum first (otherwise one that does not sum to 1
    is refused, the message offering ``--normalize-kernel``). A mask keeping far fewer pixels than
    training did gives ``on_warning`` a line (default: a ``UserWarning``)."""
    physics = model.scheme.physics
    if normalize_kernel and operators.get("kernel") is None:
        raise InputError("--normalize-kernel applies to a --kernel FILE; give one or drop it")
    given = {flag: path for flag, path in operators.items() if path is not None}
    spec = physics.user_operator
    for flag in given:
        if spec is None or flag != spec.flag:
            raise InputError(
                f"--{flag} does not apply to {model.checkpoint.path}, whose physics is {physics.name}"
                + (f"; it takes --{spec.flag} ({spec.meaning})" if spec else "")
            )
    if not given:
        return None
    path = given[spec.flag]
    operator = _read_operator(path, spec)
    try:
        params = physics.operator_params(_normalized(operator) if normalize_kernel else operator, shape)
    except ValueError as e:
        raise InputError(f"--{spec.flag} {path}: {e}") from None
    if spec.flag == "kernel":
        _check_kernel_sum(params["kernel"], path)
    if spec.flag == "mask" and (line := keep_warning(params["mask"], getattr(physics, "keep", None),
                                                     f"--mask {path}", model.checkpoint.path)):
        (on_warning or (lambda m: warnings.warn(m, UserWarning, stacklevel=3)))(line)
    return {k: v.to(model.device) for k, v in params.items()}


def _observe(model: Model, x: torch.Tensor, image: Path, seed: int | None, params: Params | None):
    """``(clean or None, observation)``: ``x`` degraded with ``seed`` (cut to what the physics observes),
    or ``x`` itself as a real observation of an image of ``physics.image_size``."""
    physics = model.scheme.physics
    if seed is not None:
        clean = physics.fit_image(x)
        check_fits(model, clean.shape, image)
        with torch.no_grad():
            return clean, physics.simulate(clean, seed, params)
    if params is None and physics.needs_user_operator:
        spec = physics.user_operator
        raise InputError(f"this checkpoint's physics is {physics.name}: give --{spec.flag} FILE ({spec.meaning}), "
                         "or --simulate")
    check_fits(model, (*x.shape[:-2], *physics.image_size(x)), image)
    return None, Observation(x, params or {})


def check_scale(model: Model, scale: int | None, image: Path) -> None:
    """``--scale``: the factor from the observation's size to the restored image's must be the model's."""
    if scale is None:
        return
    probe = torch.zeros(1, 3, 16, 16)
    own = model.scheme.physics.image_size(probe)[0] // 16
    if scale != own:
        raise InputError(f"--scale {scale}: {model.checkpoint.path} restores {image} at scale {own} "
                         f"(physics {model.config.physics.name})")


def restore_file(
    model: Model,
    image: Path,
    simulate_seed: int | None = None,
    T: int | None = None,
    tol: float | None = None,
    operators: dict[str, Path | None] | None = None,
    scale: int | None = None,
    normalize_kernel: bool = False,
    accelerate: str | None = None,
    on_restart: Callable[[int, int], None] | None = None,
    reference: Path | None = None,
    on_warning: Callable[[str], None] | None = None,
) -> RestoreResult:
    """Restore ``image``; with ``simulate_seed`` the image is clean and is degraded first (with the
    given mask or kernel, else with the checkpoint's physics' own, drawn from the seed). A real
    observation is restored at the physics' image size (``scale`` times larger for super-resolution).
    ``reference``: a real clean image of the restored size, scored against (PSNR, SSIM). ``image``
    passes :func:`~.values.unit_range` (as an observation, noise kept, unless simulated); a warning
    (a mask keeping far too few pixels) goes to ``on_warning``."""
    check_scale(model, scale, image)
    if reference is not None and simulate_seed is not None:
        raise InputError("--reference scores against a real clean image; --simulate has its own: give one of them")
    x = read_image(image, observed=simulate_seed is None).unsqueeze(0).to(model.device)
    params = user_operator(model, x.shape, operators or {}, normalize_kernel, on_warning)
    clean, obs = _observe(model, x, image, simulate_seed, params)
    if reference is not None:
        clean = read_image(reference, "--reference").unsqueeze(0).to(model.device)
        want = (*x.shape[:-2], *model.scheme.physics.image_size(x))
        if clean.shape != want:
            raise InputError(f"--reference {reference} is {clean.shape[-1]}×{clean.shape[-2]}; the restored image "
                             f"is {want[-1]}×{want[-2]}")
    result = run(model, obs, T, tol, accelerate, on_restart)
    scores = _scores(result.x, model.scheme.physics.baseline(obs), clean) if clean is not None else (None, None)
    return RestoreResult(result.x[0], obs.y[0], result.restarts, result.residual, *scores)


def _scores(x: torch.Tensor, baseline: torch.Tensor, clean: torch.Tensor) -> tuple[float, float, float, float]:
    """PSNR (peak 1) and SSIM of the restored image and of the observation's baseline against ``clean``."""
    from deepinv.loss.metric import PSNR

    from .evaluate import ssim

    psnr = PSNR(max_pixel=1.0)
    return float(psnr(x, clean)), float(psnr(baseline, clean)), float(ssim(x, clean)), float(ssim(baseline, clean))


@dataclass(frozen=True)
class FolderJob:
    """A folder restore: ``(image, output)`` pairs and the non-image files skipped."""

    pairs: list[tuple[Path, Path]]
    skipped: list[Path]


def folder_job(folder: Path, out: Path | None, force: bool, suffix: str = ".png") -> FolderJob:
    """Every image of ``folder`` → ``out/<stem>.restored<suffix>`` (the single-image name, in ``out``);
    refused before any work: no ``out``, two images of one stem, or outputs that exist (without
    ``force``)."""
    from .data import list_images

    if out is None:
        raise InputError(f"{folder} is a folder: give -o OUTDIR for its restored images")
    images, skipped = list_images(folder, "the image folder")
    pairs = [(image, out / f"{image.stem}.restored{suffix}") for image in images]
    stems = [image.stem for image in images]
    twins = sorted({s for s in stems if stems.count(s) > 1})
    if twins:
        raise InputError(f"{folder}: several images are named {twins[0]} (different suffixes); their outputs "
                         "would collide; restore them separately")
    existing = [o for _, o in pairs if o.exists()]
    if existing and not force:
        raise InputError(f"-o {out}: {len(existing)} of the outputs exist already (first {existing[0].name}); "
                         "--force overwrites them")
    return FolderJob(pairs, skipped)


def restore_folder(model: Model, job: FolderJob, write: Callable[[Path, RestoreResult], None],
                   on_image: Callable[[int, int, str], None] | None = None, **options) -> list[RestoreResult]:
    """Restore each image of ``job`` (``options`` as :func:`restore_file`'s), handing each result to
    ``write(output, result)``; ``on_image(done, total, name)`` before each."""
    results = []
    for i, (image, output) in enumerate(job.pairs):
        if on_image:
            on_image(i, len(job.pairs), image.name)
        results.append(restore_file(model, image, **options))
        write(output, results[-1])
    return results
