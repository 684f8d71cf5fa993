"""The Python API: a checkpoint as a torch module, training from a notebook.

    restorer = retune_cli.load("runs/bc/theta.safetensors")   # an nn.Module
    x_hat = restorer(y)            # y: (3, H, W) or (N, 3, H, W) in [0, 1] (or uint8), any size, any device
    model = restorer.to_deepinv()  # a deepinv Reconstructor: model(y, physics), deepinv.test(model, …)
    noisier = retune_cli.load("runs/bc/theta.safetensors", sigma=0.2)   # thresholds × 0.2/σ_train
    restorer = retune_cli.fit("denoise-wavelet-b", images, out="runs/nb", overrides={"train.steps": 20})

The same functions as the CLI: :func:`~.restore.load_model` and :func:`~.restore.run` (``retune
restore``), :func:`~.train.train` (``retune train``).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from deepinv.models import Reconstructor
from torch import nn

from .advice import unlearned_warning
from .config import Config, resolve, with_overrides
from .core.physics import Observation, Params
from .data import Images, TensorImages
from .restore import Model, load_model, run
from .train import StepReport, train
from .values import binary_mask, check_budget, keep_warning, unit_range


class Restorer(nn.Module):
    """A checkpoint's restarted scheme as a module: ``x̂ = Φ_K^T(y)`` (T restarts of K steps, or
    restarts until ``‖u_t − u_{t−1}‖/‖u_t‖ ≤ tol``), with the checkpoint's physics and θ. No gradient
    flows through it (learn θ with :func:`fit`). ``T`` (an integer ≥ 1) and ``tol`` (finite, ≥ 0) are
    checked here: ``ValueError`` naming them."""

    def __init__(self, model: Model, T: int | None = None, tol: float | None = None) -> None:
        check_budget(T, tol, ValueError)
        super().__init__()
        self.scheme = model.scheme
        self.checkpoint = model.checkpoint
        self.T, self.tol = T, tol

    @property
    def config(self) -> Config:
        return self.checkpoint.config

    @property
    def device(self) -> torch.device:
        return next(self.scheme.parameters()).device

    def forward(self, y: torch.Tensor, params: Params | None = None) -> torch.Tensor:
        """Restore ``y`` ``(3, H, W)`` or ``(N, 3, H, W)`` (moved to the module's device; the result comes
        back on ``y``'s device, in ``y``'s float dtype or float32); ``params``: the physics' operator, e.g.
        ``{"mask": m}`` (0/1, white = kept, ``(N or 1, 1, H, W)``). ``y`` passes :func:`~.values.unit_range`
        as an observation (``uint8`` scaled, 0–255 floats refused): ``ValueError`` naming what is wrong. The
        result is the window the observation shows (``Physics.observed_window``: y's size for a valid blur)."""
        if not isinstance(y, torch.Tensor) or y.dim() not in (3, 4) or y.shape[-3] != 3 or 0 in y.shape:
            raise ValueError(f"expected an image tensor (3, H, W) or (N, 3, H, W) with N, H, W ≥ 1, got "
                             f"{getattr(y, 'shape', y)}")
        params = self._checked_params(params or {}, y)
        batch = unit_range(y if y.dim() == 4 else y.unsqueeze(0), "y", observed=True, error=ValueError)
        obs = Observation(batch.to(self.device), params)
        solution = run(Model(self.checkpoint, self.scheme), obs, self.T, self.tol)
        x = self.scheme.physics.observed_window(solution.x, params)
        return (x if y.dim() == 4 else x[0]).to(y.device, y.dtype if y.is_floating_point() else torch.float32)

    def _checked_params(self, params: Params, y: torch.Tensor) -> Params:
        """``params`` on the module's device, refused unless they are the physics' own (a mask binary, of
        ``y``'s size, keeping a pixel; one keeping far fewer than training did warns)."""
        physics, spec = self.scheme.physics, self.scheme.physics.user_operator
        takes = f"it takes params={{{spec.flag!r}: …}} ({spec.meaning})" if spec else "it takes no params"
        unknown = sorted(set(params) - ({spec.flag} if spec else set()), key=str)
        if unknown:
            raise ValueError(f"params[{unknown[0]!r}] is no parameter of this checkpoint's physics "
                             f"{physics.name}; {takes}")
        if not params and physics.needs_user_operator:
            raise ValueError(f"this checkpoint's physics is {physics.name}: pass params={{{spec.flag!r}: …}} "
                             f"({spec.meaning})")
        params = dict(params)
        if "mask" in params:
            mask = params["mask"]
            if not isinstance(mask, torch.Tensor) or tuple(mask.shape[-2:]) != tuple(y.shape[-2:]):
                raise ValueError(f"params['mask'] is {tuple(getattr(mask, 'shape', ()))}; y is {tuple(y.shape)}: "
                                 "a mask is (N or 1, 1, H, W) of y's H, W")
            params["mask"] = binary_mask(mask, "params['mask']", ValueError)
            line = keep_warning(params["mask"], getattr(physics, "keep", None), "params['mask']", self.checkpoint.path)
            if line:
                warnings.warn(line, UserWarning, stacklevel=4)
        return {k: v.to(self.device) for k, v in params.items()}

    def to_deepinv(self) -> DeepinvRestorer:
        """This restorer as a deepinv ``Reconstructor`` (for ``deepinv.test`` and deepinv pipelines)."""
        return DeepinvRestorer(self)


class DeepinvRestorer(Reconstructor):
    """deepinv's interface ``x̂ = model(y, physics)``. The checkpoint's own degradation is what θ was
    learned for: ``physics`` (deepinv's) only generates ``y`` in deepinv's loops and is not read here."""

    def __init__(self, restorer: Restorer) -> None:
        super().__init__(device=restorer.device)
        self.restorer = restorer

    def forward(self, y: torch.Tensor, physics=None, **kwargs) -> torch.Tensor:
        return self.restorer(y)


def load(path: Path | str, device: torch.device | str = "cpu", T: int | None = None, tol: float | None = None,
         trust_code: bool = False, sigma: float | Sequence[float] | None = None) -> Restorer:
    """Load ``theta.safetensors`` as a :class:`Restorer` on ``device`` (T, tol and sigma as ``retune
    restore``'s: ``sigma``, the noise level of the images to restore, one or per channel, scales the
    thresholds by ``sigma/σ_train``)."""
    return Restorer(load_model(path, device, trust_code, sigma), T, tol)


def fit(
    config: Config | str,
    data=None,
    out: Path | str = "runs/api",
    overrides: dict[str, object] | None = None,
    device: torch.device | str = "cpu",
    force: bool = False,
    on_step: Callable[[StepReport], None] | None = None,
    trust_code: bool = False,
) -> Restorer:
    """Train θ as ``retune train`` does and return the trained :class:`Restorer`.

    ``config``: a preset name or file, or a :class:`Config`; ``overrides``: dotted keys as ``--set``
    (``{"train.steps": 20}``); ``data``: None (the built-in samples), a folder, or images in memory —
    a tensor ``(N, C, H, W)``, a list of ``(C, H, W)`` tensors or any torch ``Dataset`` of them (items
    may be ``(image, …)`` tuples). The run folder ``out`` holds the checkpoint, log.csv and psnr.png.
    A run that ends within 1 dB of its observations' PSNR warns (``UserWarning``) with what usually helps.
    ``trust_code``: a config file's ``plugins`` and a ``train.init`` checkpoint's may run their code.
    """
    if isinstance(config, str):
        config = resolve(config, overrides, trust_code)
    elif overrides:
        config = with_overrides(config, overrides, "overrides")
    if data is not None and not isinstance(data, (str, Path, Images)):
        data = TensorImages(data)
    folder = Path(data) if isinstance(data, str) else data
    result = train(config, Path(out), folder, device, force=force, on_step=on_step, trust_code=trust_code)
    warning = unlearned_warning(config, folder, result.steps, result.psnr)
    if warning:
        warnings.warn(warning, stacklevel=2)
    return load(result.checkpoint, device, trust_code=True)  # the code this call ran already
