"""The denoiser of plug-and-play presets: deepinv's DRUNet, with weights from one of three places.

* ``builtin`` (the offline default): a small DRUNet (nc = 16, 32, 64, 128; nb = 2) shipped in
  ``retune_cli/weights/``, trained by ``scripts/train_small_drunet.py`` on the built-in public-domain
  photographs for Gaussian noise σ ∈ [0, 0.2]; its file's metadata records how;
* ``download``: deepinv's pretrained colour DRUNet (needs the network once; cached by torch.hub);
* a path to a ``.pth`` (a state dict of deepinv's default DRUNet) or ``.safetensors`` file (its
  ``architecture`` metadata, when present, gives ``nc`` and ``nb``).
"""

from __future__ import annotations

import json
import pickle
import reprlib
from importlib import resources
from pathlib import Path

import torch

from .core.denoiser_prior import DenoiserPrior
from .core.prior import register_prior
from .errors import InputError
from .files import input_file, read_safetensors, reason

BUILTIN = "builtin"
DOWNLOAD = "download"
DOWNLOAD_FILE = "drunet_deepinv_color_finetune_22k.pth"


def builtin_weights() -> Path:
    return Path(str(resources.files("retune_cli") / "weights" / "drunet_small.safetensors"))


def _download() -> torch.nn.Module:
    from deepinv.models import DRUNet
    from deepinv.models.utils import get_weights_url

    try:
        return DRUNet(3, 3, pretrained="download")
    except (OSError, RuntimeError, ValueError) as e:
        target = Path(torch.hub.get_dir()) / "checkpoints" / DOWNLOAD_FILE
        url = get_weights_url("drunet", DOWNLOAD_FILE).split("?")[0]
        raise InputError(
            f"cannot download the pretrained DRUNet ({type(e).__name__}); fetch {url} and save it as {target}, "
            "or give a local file with --set model.denoiser=PATH"
        ) from None


def _architecture(metadata: dict | None, stored: int) -> dict:
    """``nc`` and ``nb`` from a file's ``architecture`` metadata, checked before DRUNet allocates anything:
    four positive channel counts and a positive block count, for a network no larger than the ``stored``
    numbers (its residual blocks alone hold 18·nb·Σnc² weights)."""
    if not metadata or "architecture" not in metadata:
        return {}
    arch = json.loads(metadata["architecture"])
    nc, nb = arch["nc"], arch["nb"]
    counts = [*nc, nb] if isinstance(nc, list) and len(nc) == 4 else []
    if not counts or not all(type(c) is int and c >= 1 for c in counts):
        raise ValueError(f"its architecture metadata {reprlib.repr(arch)} is not 4 channel counts nc and a block "
                         "count nb, all positive integers")
    if 18 * nb * sum(c * c for c in nc) > stored:
        raise ValueError(f"its architecture metadata (nc={nc}, nb={nb}) describes a network larger than the "
                         f"{stored} weights it stores")
    return {"nc": tuple(nc), "nb": nb}


def _from_file(path: Path) -> torch.nn.Module:
    from deepinv.models import DRUNet

    input_file(path, "denoiser weights", "; use builtin, download, or a .pth/.safetensors file")
    try:
        if path.suffix == ".safetensors":
            state, metadata = read_safetensors(path, "denoiser weights")
            arch = _architecture(metadata, sum(t.numel() for t in state.values()))
        else:
            state, arch = torch.load(path, map_location="cpu", weights_only=True), {}
    except InputError:
        raise
    except pickle.UnpicklingError:  # torch's weights-only loader met Python objects: never unpickled here
        raise InputError(f"denoiser weights {path} pickle Python objects, which retune does not load (they could "
                         "run code); save the state_dict alone (torch.save(model.state_dict(), path)) or a "
                         ".safetensors file") from None
    except Exception as e:  # noqa: BLE001 - any unreadable file is the user's to fix
        raise InputError(f"cannot read denoiser weights {path}: {reason(e)}") from None
    model = DRUNet(3, 3, pretrained=None, **arch)
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError) as e:
        raise InputError(f"{path} does not hold DRUNet weights of that architecture ({str(e)[:80]}…)") from None
    return model


def load_denoiser(spec: str) -> torch.nn.Module:
    """A DRUNet in eval mode for ``spec`` (``builtin``, ``download`` or a file path)."""
    if spec == DOWNLOAD:
        model = _download()
    else:
        model = _from_file(builtin_weights() if spec == BUILTIN else Path(spec).expanduser())
    return model.eval()


@register_prior
class PlugAndPlay(DenoiserPrior):
    """``model.prior: pnp``: :class:`~.core.denoiser_prior.DenoiserPrior` with the network named by
    ``model.denoiser`` (:func:`load_denoiser`)."""

    @classmethod
    def build(cls, options: dict[str, object], channels: int) -> PlugAndPlay:
        options = dict(options)
        return cls(load_denoiser(str(options.pop("denoiser"))), **options)
