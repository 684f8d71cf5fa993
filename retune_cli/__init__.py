"""retune: learn the hyperparameters of image-restoration algorithms at equilibrium (ReTune)."""

__version__ = "0.1.0"
