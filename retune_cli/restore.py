"""Restore workflow: run a checkpoint's restarted scheme on one degraded image, write the result as the
input was stored (gray stays gray, 16 bits stay 16 bits) and score what was written."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from . import checkpoint as ckpt
from .components import physics_class
from .config import TrainConfig, with_overrides
from .core.hypergrad import GRADIENT_MODES, Solution, restore
from .core.physics import Observation, Params
from .core.schemes import NoValidStep
from .errors import InputError
from .images import JPEG, Stored, read_image, read_stored, write_image
from .limits import check_cost
from .memory_check import check_restore_memory
from .models import build_scheme
from .noise_level import NoiseScaling, estimated_sigma, rescale
from .user_operators import user_operator
from .values import check_budget

MAX_RESTARTS_WITH_TOL = 1000


@dataclass(frozen=True)
class Model:
    """A checkpoint and the scheme it describes, with θ loaded."""

    checkpoint: ckpt.Checkpoint
    scheme: torch.nn.Module
    noise: NoiseScaling | None = None  # moved to another noise level than training's (--sigma)
    boundary: str | None = None  # the physics' boundary, when set at load unlike training's (--boundary)

    @property
    def config(self):
        return self.checkpoint.config

    @property
    def device(self) -> torch.device:
        return next(self.scheme.parameters()).device


def load_model(path: Path | str, device: torch.device | str = "cpu", trust_code: bool = False,
               sigma: float | Sequence[float] | None = None, boundary: str | None = None) -> Model:
    """A checkpoint's scheme with θ loaded; ``sigma`` (1 or 3 noise levels): moved to that noise
    level, its thresholds scaled by ``sigma/σ_train`` (:mod:`.noise_level`); ``boundary``: the physics'
    ``physics.boundary`` for this restore (``"real"``: ``reflect`` where the physics has boundaries and
    trained with ``circular``, as fits a photograph, which extends past its edges, not around them, unless
    its scheme needs the circular data prox)."""
    checkpoint = ckpt.load(path, trust_code)
    chosen = _boundary(checkpoint, boundary)
    if chosen is not None:
        try:
            config = with_overrides(checkpoint.config, {"physics.boundary": chosen}, "--boundary")
        except InputError:
            if boundary != "real":
                raise
            chosen, config = None, checkpoint.config  # its scheme needs circular boundaries (drs, hqs)
        checkpoint = replace(checkpoint, config=config)
    scheme = build_scheme(checkpoint.config, device)
    ckpt.load_parameters(scheme, checkpoint)
    noise = None if sigma is None else rescale(scheme, checkpoint.config.physics.sigma, sigma, str(checkpoint.path))
    scheme.eval()
    return Model(checkpoint, scheme, noise, chosen)


def _boundary(checkpoint: ckpt.Checkpoint, boundary: str | None) -> str | None:
    """The boundary to set (None: as trained); refused for a physics without boundaries, unless ``"real"``."""
    physics = checkpoint.config.physics
    has = "boundary" in physics_class(physics.name).options
    if boundary == "real":
        return "reflect" if has and physics.boundary == "circular" else None
    if boundary is not None and not has:
        raise InputError(f"--boundary applies to blurs; the physics of {checkpoint.path} is {physics.name}")
    return None if boundary == physics.boundary else boundary


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
    psnr: float | None  # of the written image (else the result) against the clean input (--simulate) or --reference
    psnr_observation: float | None
    ssim: float | None = None
    ssim_observation: float | None = None
    noise: NoiseScaling | None = None  # the noise level estimated from this image (sigma="auto")


@dataclass(frozen=True)
class Output:
    """Where and how a restore writes: the result ``path``, optionally the ``observation``; ``bits`` of
    PNG/TIFF (None: as the input stored its values; 8 for JPEG), JPEG ``quality``."""

    path: Path
    observation: Path | None = None
    bits: int | None = None
    quality: int = 95

    def write(self, result: RestoreResult, stored: Stored) -> None:
        """Both images, gray when the input was gray."""
        for path, image in ((self.path, result.restored), (self.observation, result.observation)):
            if path is not None:
                bits = 8 if path.suffix.lower() in JPEG else (self.bits or stored.bits)
                write_image(path, image, bits, self.quality, stored.gray)


def check_fits(model: Model, shape: torch.Size, image: Path | str) -> None:
    """Refuse an image that the model's physics cannot observe (e.g. smaller than its blur kernel)."""
    try:
        model.scheme.physics.check_fits(shape)
    except ValueError as e:
        raise InputError(f"{image}: {e}") from None


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
    check_fits(model, (*x.shape[:-2], *physics.image_size(x, params)), image)
    return None, Observation(x, params or {})


def check_scale(model: Model, scale: int | None, image: Path) -> None:
    """``--scale``: the factor from the observation's size to the restored image's must be the model's."""
    if scale is None:
        return
    own = _written_size(model, torch.zeros(1, 3, 16, 16), {})[0] // 16
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
    output: Output | None = None,
    sigma: str | None = None,
    invert_mask: bool = False,
) -> RestoreResult:
    """Restore ``image``; with ``simulate_seed`` the image is clean and is degraded first (with the
    given mask or kernel, else with the checkpoint's physics' own, drawn from the seed). A real
    observation is restored at the physics' image size (``scale`` times larger for super-resolution) and
    written cut to the window it observes (:meth:`~.core.physics.Physics.observed_window`: a valid blur's
    result is the observation's size). ``reference``: a real clean image of the written size, scored against
    (PSNR, SSIM). ``image``
    passes :func:`~.values.unit_range` (as an observation, noise kept, unless simulated); a warning
    (a mask probably inverted) goes to ``on_warning``; ``invert_mask``: white = the holes.
    ``sigma="auto"``: the model moved to the noise level estimated from the observation
    (:func:`~.noise_level.estimated_sigma`). ``output``: written as the input was stored, and what was
    written is what is scored."""
    check_scale(model, scale, image)
    if reference is not None and simulate_seed is not None:
        raise InputError("--reference scores against a real clean image; --simulate has its own: give one of them")
    x, stored = read_stored(image, observed=simulate_seed is None)
    x = x.unsqueeze(0).to(model.device)
    params = user_operator(model, x.shape, operators or {}, normalize_kernel, on_warning, invert_mask)
    clean, obs = _observe(model, x, image, simulate_seed, params)
    if reference is not None:
        clean = _reference(model, x, obs.params, reference)
    if sigma == "auto":
        model = with_estimated_noise(model, obs, image)
    check_restore_memory(model.scheme, obs.y, str(image))
    solution = run(model, obs, T, tol, accelerate, on_restart)
    physics = model.scheme.physics
    written = (lambda v: v) if simulate_seed is not None else (lambda v: physics.observed_window(v, obs.params))
    result = RestoreResult(written(solution.x)[0], obs.y[0], solution.restarts, solution.residual, None, None,
                           noise=model.noise if sigma == "auto" else None)
    if output is not None:
        output.write(result, stored)
    if clean is None:
        return result
    scored = written(solution.x) if output is None else read_image(output.path, observed=True)[None].to(model.device)
    return replace(result, **_scores(scored, written(physics.baseline(obs)), clean))


def _written_size(model: Model, y: torch.Tensor, params: Params) -> tuple[int, int]:
    """``(H, W)`` of the image that restoring a real observation ``y`` writes."""
    physics = model.scheme.physics
    return tuple(physics.observed_window(y.new_empty((1, 1, *physics.image_size(y, params))), params).shape[-2:])


def _reference(model: Model, x: torch.Tensor, params: Params, reference: Path) -> torch.Tensor:
    """``--reference``: a clean image of the written size, ``(1, 3, H, W)``."""
    clean = read_image(reference, "--reference").unsqueeze(0).to(model.device)
    want = (*x.shape[:-2], *_written_size(model, x, params))
    if clean.shape != want:
        raise InputError(f"--reference {reference} is {clean.shape[-1]}×{clean.shape[-2]}; the restored image "
                         f"is {want[-1]}×{want[-2]}")
    return clean


def with_estimated_noise(model: Model, obs: Observation, image: Path | str) -> Model:
    """A copy of ``model`` moved to the noise level estimated from ``obs`` (per channel, on the pixels
    its physics observes), as ``restore --sigma S`` moves it (:func:`~.noise_level.rescale`)."""
    physics = model.scheme.physics
    sigma = estimated_sigma(obs.y[0], physics.observed_pixels(obs.params), f"--sigma auto: {image}")
    scheme = copy.deepcopy(model.scheme)
    noise = rescale(scheme, model.config.physics.sigma, sigma, str(model.checkpoint.path))
    return replace(model, scheme=scheme, noise=noise)


def _scores(x: torch.Tensor, baseline: torch.Tensor, clean: torch.Tensor) -> dict[str, float]:
    """PSNR (peak 1) and SSIM of the restored image and of the observation's baseline against ``clean``."""
    from deepinv.loss.metric import PSNR

    from .evaluate import ssim

    psnr = PSNR(max_pixel=1.0)
    return {"psnr": float(psnr(x, clean)), "psnr_observation": float(psnr(baseline, clean)),
            "ssim": float(ssim(x, clean)), "ssim_observation": float(ssim(baseline, clean))}


