"""Figures written next to the results (matplotlib, headless)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path


def _figure(panels: int = 1):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(1, panels, figsize=(6 * panels, 4), dpi=120, squeeze=panels == 1)


def _save(fig, path: Path) -> None:
    """Write atomically (:func:`~retune_cli.files.atomic_write`); the suffix gives the format."""
    import matplotlib.pyplot as plt

    from .files import atomic_write

    fig.tight_layout()
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, format=path.suffix.lstrip(".") or "png"))
    finally:
        plt.close(fig)


def plot_curves(
    path: Path,
    curves: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    xlabel: str = "step",
    ylabel: str = "train PSNR (dB)",
    title: str = "",
) -> None:
    """One line per labelled ``(x, y)`` series, written atomically as an image (suffix gives the format)."""
    fig, ax = _figure()
    for label, (x, y) in curves.items():
        ax.plot(x, y, label=label, linewidth=1.5)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    if len(curves) > 1:
        ax.legend()
    _save(fig, path)


def plot_curve_panels(path: Path, runs: Mapping[str, Mapping[str, Sequence[float]]],
                      ylabel: str = "train PSNR (dB)") -> None:
    """Runs (label → ``{"step", "seconds", "psnr"}`` series) as PSNR against steps (left) and against
    wall-clock seconds (right), one line per run in both panels."""
    fig, axes = _figure(2)
    for ax, x in zip(axes[0], ("step", "seconds")):
        for label, series in runs.items():
            ax.plot(series[x], series["psnr"], label=label, linewidth=1.5)
        ax.set_xlabel("step" if x == "step" else "wall-clock seconds")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    if len(runs) > 1:
        axes[0][0].legend()
    _save(fig, path)


def plot_gradient_errors(path: Path, rows: list[dict]) -> None:
    """compare-grads figure: ReTune's relative error to DEQ against T, one colour per K; JFB
    (the plateau) and its Lemma-1 bound (relative to ‖g_DEQ‖) dashed; log scale."""
    deq = next(r for r in rows if r["method"] == "deq")
    deq_norm = sum(v * v for v in deq["gradient"]) ** 0.5
    fig, ax = _figure()
    for i, K in enumerate(sorted({r["K"] for r in rows if r["method"] == "retune"})):
        color = f"C{i}"
        retune = sorted((r["T"], r["rel_err_deq"]) for r in rows if r["method"] == "retune" and r["K"] == K)
        ax.plot(*zip(*retune), "o-", color=color, label=f"ReTune K={K}")
        jfb = next(r for r in rows if r["method"] == "jfb" and r["K"] == K)
        ax.axhline(jfb["rel_err_deq"], color=color, linestyle="--", linewidth=1, label=f"JFB K={K}")
        if jfb["bound"] is not None:
            ax.axhline(jfb["bound"] / deq_norm, color=color, linestyle=":", linewidth=1, label=f"Lemma 1 bound K={K}")
    ax.set_xlabel("restarts T")
    ax.set_ylabel("‖g − g_DEQ‖ / ‖g_DEQ‖")
    ax.set_yscale("log")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    _save(fig, path)
