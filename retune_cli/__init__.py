"""retune: learn the hyperparameters of image-restoration algorithms at equilibrium (ReTune)."""

__version__ = "0.1.0"
DEFAULT_PRESET = "denoise-wavelet-b"  # what train and compare-grads use without --preset

API = ("load", "fit", "Restorer")  # retune_cli.load(...), …: imported on first use, so `retune --help` stays fast


def __getattr__(name: str):
    if name in API:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'retune_cli' has no attribute {name!r}")
