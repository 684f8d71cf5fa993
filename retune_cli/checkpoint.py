"""Checkpoints: one safetensors file, θ as tensors, the resolved config and progress as metadata.

Tensors: the scheme's parameters (``theta.log_lambda``, ``theta.log_Lambda``, …) and, for resuming,
Adam's moments under ``optimizer.``. Metadata (str → str): ``format``, ``format_version``,
``retune_version``, ``config`` (YAML), ``K``, ``T``, ``step``, ``train_psnr``, ``data`` (the
training folder; empty for the built-in samples; ``bytes:`` and its %-escaped bytes for a name that
is not UTF-8), ``processes`` (how many trained it). Files are written to a temporary name in the same
folder, flushed, then renamed over the target: a crash at any moment leaves either the old or the new
checkpoint, never a torn one.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote_from_bytes, unquote_to_bytes

from . import __version__
from .config import Config, from_yaml
from .errors import InputError
from .files import atomic_write, input_file, read_safetensors

if TYPE_CHECKING:
    import torch

FORMAT = "retune-checkpoint"
FORMAT_VERSION = "1"
OPTIMIZER_PREFIX = "optimizer."
PATH_BYTES = "bytes:"  # metadata holds text: a path that is not UTF-8 is stored as its %-escaped bytes


def path_text(path: Path | None) -> str:
    """``path`` as metadata text that round-trips through :func:`text_path` ("" for None)."""
    if path is None:
        return ""
    text = str(Path(path).resolve())
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:  # surrogate-escaped bytes of a non-UTF-8 name
        return PATH_BYTES + quote_from_bytes(os.fsencode(text))


def text_path(text: str) -> Path | None:
    """The path :func:`path_text` stored (None for "")."""
    if not text:
        return None
    return Path(os.fsdecode(unquote_to_bytes(text[len(PATH_BYTES):]))) if text.startswith(PATH_BYTES) else Path(text)


@dataclass
class Checkpoint:
    """A loaded checkpoint: parameters, optimizer moments, config and progress."""

    path: Path
    config: Config
    parameters: dict[str, torch.Tensor]
    optimizer: dict[str, torch.Tensor]
    step: int
    train_psnr: float
    data: Path | None = None  # the training folder (None: the built-in samples)


def save(
    path: Path,
    config: Config,
    parameters: dict[str, torch.Tensor],
    step: int,
    train_psnr: float,
    optimizer: dict[str, torch.Tensor] | None = None,
    data: Path | None = None,
    processes: int = 1,
    shown: str | None = None,
) -> None:
    """Write a checkpoint atomically (temporary file in the same folder, fsync, rename); ``shown``: what
    ``retune show`` prints of θ, as JSON (:func:`~.summary.stored`), so that it reads without torch."""
    from safetensors.torch import save as serialize

    tensors = {k: v.detach().cpu().contiguous() for k, v in parameters.items()}
    tensors.update({OPTIMIZER_PREFIX + k: v.detach().cpu().contiguous() for k, v in (optimizer or {}).items()})
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "retune_version": __version__,
        "config": config.to_yaml(),
        "K": str(config.train.K),
        "T": str(config.train.T),
        "step": str(step),
        "train_psnr": f"{train_psnr:.6f}",
        "data": path_text(data),
        "processes": str(processes),
        **({"shown": shown} if shown is not None else {}),
    }
    content = serialize(tensors, metadata=metadata)
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(content))


def load(path: Path | str, trust_code: bool = False) -> Checkpoint:
    """Read and check a checkpoint; :class:`InputError` says what is wrong with a bad one. A checkpoint
    whose physics runs code named in its config is refused unless ``trust_code``."""
    path = input_file(path, "checkpoint", "; give a theta.safetensors written by retune train")
    tensors, metadata = read_safetensors(path, "checkpoint")
    if metadata.get("format") != FORMAT or "config" not in metadata:
        raise InputError(f"{path} is a safetensors file but not a retune checkpoint (no retune metadata)")
    if metadata.get("format_version") != FORMAT_VERSION:
        raise InputError(
            f"{path} has checkpoint format {metadata.get('format_version')}; this retune reads {FORMAT_VERSION}"
        )
    config = from_yaml(metadata["config"], str(path), trust_code)
    try:
        step, psnr = int(metadata["step"]), float(metadata["train_psnr"])
    except (KeyError, ValueError):
        raise InputError(f"{path}: its step or train_psnr metadata is missing or malformed") from None
    parameters = {k: v for k, v in tensors.items() if not k.startswith(OPTIMIZER_PREFIX)}
    optimizer = {k[len(OPTIMIZER_PREFIX) :]: v for k, v in tensors.items() if k.startswith(OPTIMIZER_PREFIX)}
    return Checkpoint(path, config, parameters, optimizer, step, psnr, text_path(metadata.get("data", "")))


def checkpoint_tensors(scheme: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every tensor of θ by checkpoint name: ``theta.<name>``, and the prior's network weights as
    ``<network>.<name>`` (``denoiser.…``)."""
    from .models import checkpoint_name

    return {checkpoint_name(scheme, f"theta.{k}"): v for k, v in scheme.theta.state_dict().items()}


def learned_parameters(scheme: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The tensors a checkpoint stores: ``theta.<name>`` always, and the network's (``denoiser.<name>``)
    when it is being learned."""
    network = getattr(scheme.theta, "network", None)
    learned = network is not None and any(p.requires_grad for p in getattr(scheme.theta, network).parameters())
    return {k: v for k, v in checkpoint_tensors(scheme).items() if learned or not k.startswith(f"{network}.")}


def _copy_into(scheme: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Copy checkpoint tensors (names checked by the caller) into θ."""
    import torch

    own = checkpoint_tensors(scheme)
    with torch.no_grad():
        for name, value in tensors.items():
            own[name].copy_(value)


def load_parameters(scheme: torch.nn.Module, checkpoint: Checkpoint) -> None:
    """Copy the checkpoint's tensors into ``scheme.theta``, refusing any mismatch with its config."""
    expected = {k: v.shape for k, v in learned_parameters(scheme).items()}
    found = {k: v.shape for k, v in checkpoint.parameters.items()}
    if expected != found:
        missing = sorted(set(expected) - set(found))
        extra = sorted(set(found) - set(expected))
        shapes = sorted(k for k in set(expected) & set(found) if expected[k] != found[k])
        detail = f"missing {missing}" if missing else f"unexpected {extra}" if extra else f"wrong shape for {shapes}"
        raise InputError(f"{checkpoint.path}: its tensors do not match its config ({detail})")
    _check_finite(checkpoint.parameters, str(checkpoint.path))
    _copy_into(scheme, checkpoint.parameters)


def _check_finite(tensors: dict[str, torch.Tensor], source: str) -> None:
    """Refuse floating-point tensors with NaN or infinite values, naming the first."""
    import torch

    bad = [k for k, v in tensors.items() if v.is_floating_point() and not torch.all(torch.isfinite(v))]
    if bad:
        raise InputError(f"{source}: tensor {bad[0]} has non-finite values")


def load_init(scheme: torch.nn.Module, checkpoint: Checkpoint) -> None:
    """Start ``scheme`` from another run's θ (and denoiser weights, when it carries them)."""
    own = {k: v.shape for k, v in checkpoint_tensors(scheme).items()}
    tensors = checkpoint.parameters
    if not tensors.keys() <= own.keys() or any(own[k] != v.shape for k, v in tensors.items()):
        raise InputError(
            f"--init {checkpoint.path}: its tensors do not fit this model ({checkpoint.config.model.prior})"
        )
    _check_finite(tensors, f"--init {checkpoint.path}")
    _copy_into(scheme, tensors)


def started_config(config: Config, scheme: torch.nn.Module) -> Config:
    """``config`` recording the θ a ``train.init`` run starts from: PnP's ``init_sigma``, ``init_tau`` become
    the (σ, τ) loaded into ``scheme`` (to float32's 7 digits); wavelet θ is a vector that ``train.init``
    names (config.yaml says so in its first line)."""
    import torch

    theta = scheme.theta
    if not config.train.init or not hasattr(theta, "log_sigma"):
        return config
    sigma, tau = (float(f"{torch.exp(p.detach()).item():.7g}") for p in (theta.log_sigma, theta.log_tau))
    return dataclasses.replace(config, model=dataclasses.replace(config.model, init_sigma=sigma, init_tau=tau))


ADAM_STATE = {"step", "exp_avg", "exp_avg_sq"}


@dataclass
class TrainState:
    """What a resumed run needs: the scheme (θ, denoiser), Adam and its parameters by checkpoint name."""

    scheme: torch.nn.Module
    optimizer: torch.optim.Adam
    params: dict[str, torch.nn.Parameter]

    @property
    def updates(self) -> int:
        """How many Adam steps have been applied (its own step counter), 0 before the first."""
        counts = [int(state["step"]) for state in self.optimizer.state.values() if "step" in state]
        return max(counts, default=0)

    def optimizer_tensors(self) -> dict[str, torch.Tensor]:
        """Adam's moments and step counts as ``<param name>.<state key>`` tensors."""
        import torch

        names = {id(p): n for n, p in self.params.items()}
        return {
            f"{names[id(p)]}.{key}": torch.as_tensor(value)
            for p, state in self.optimizer.state.items()
            for key, value in state.items()
        }

    def save(self, path: Path, config: Config, step: int, psnr: float, data: Path | None, processes: int) -> None:
        from .summary import stored

        save(path, config, learned_parameters(self.scheme), step, psnr, self.optimizer_tensors(), data, processes,
             stored(config, self.scheme))

    def load(self, checkpoint: Checkpoint) -> None:
        """θ (and denoiser weights) and Adam's moments from ``checkpoint``, refusing a state that does
        not fit the parameters."""
        import torch

        load_parameters(self.scheme, checkpoint)
        for name, p in self.params.items():
            state = {
                k.rsplit(".", 1)[1]: v.to(p.device)
                for k, v in checkpoint.optimizer.items()
                if k.rsplit(".", 1)[0] == name
            }
            if not state:
                continue
            problem = _adam_state_problem(state, p)
            if problem:
                raise InputError(f"{checkpoint.path}: its optimizer state for {name} {problem}; resume is impossible")
            state["step"] = state["step"].to("cpu", torch.float32)
            self.optimizer.state[p] = state


def _adam_state_problem(state: dict[str, torch.Tensor], p: torch.nn.Parameter) -> str | None:
    """What is wrong with Adam's state for ``p`` (moments of its shape and dtype, finite, the second
    non-negative; one finite step count ≥ 0), or None."""
    import torch

    if set(state) != ADAM_STATE:
        return "is incomplete"
    moments = [state["exp_avg"], state["exp_avg_sq"]]
    if any(m.shape != p.shape or m.dtype != p.dtype for m in moments) or state["step"].numel() != 1:
        return f"does not fit (θ is {p.dtype} of shape {tuple(p.shape)})"
    step = state["step"].double()
    if not (all(torch.all(torch.isfinite(m)) for m in moments) and bool(torch.isfinite(step)) and step >= 0):
        return "has non-finite values or a negative step count"
    if torch.any(state["exp_avg_sq"] < 0):
        return "has a negative second moment"
    return None
