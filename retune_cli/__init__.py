"""retune: learn the hyperparameters of image-restoration algorithms at equilibrium (ReTune)."""

__version__ = "0.1.0"
DEFAULT_PRESET = "denoise-wavelet-b"  # what train and compare-grads use without --preset
