"""Figures written next to the results (matplotlib, headless)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path


def _figure(panels: int = 1, rows: int = 1):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(rows, panels, figsize=(6 * panels, 4 * rows), dpi=120, squeeze=panels * rows == 1)


def _grid(panels: int, columns: int):
    """A figure of ``panels`` axes laid out ``columns`` to a row (fewer when there are fewer panels), the
    unused cells of the last row hidden: ``(figure, the axes in reading order)``."""
    columns = max(1, min(columns, panels))
    rows = -(-panels // columns)
    import numpy as np

    fig, axes = _figure(columns, rows)
    cells = list(np.ravel(axes))
    for ax in cells[panels:]:
        ax.set_visible(False)
    return fig, cells[:panels]


def _save(fig, path: Path) -> None:
    """Write atomically (:func:`~retune_cli.files.atomic_write`); the suffix gives the format."""
    import matplotlib.pyplot as plt

    from .files import atomic_write

    fig.tight_layout()
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", bbox_inches="tight"))
    finally:
        plt.close(fig)


SMOOTH = 25  # steps of the moving average drawn over raw PSNR dots (the paper's Fig. 1–3 style)


def moving_average(y: Sequence[float], window: int = SMOOTH, at: Sequence[float] | None = None) -> list[float]:
    """Trailing mean over ``window`` steps: ``ȳ_i = mean{y_k : at_i − window < at_k ≤ at_i}`` (``at``:
    the steps of the values, default 0, 1, 2, …; sparse values such as validation PSNR average fewer)."""
    at = list(range(len(y))) if at is None else list(at)
    sums, out, start = [0.0], [], 0
    for i, v in enumerate(y):
        sums.append(sums[-1] + v)
        while at[start] <= at[i] - window:
            start += 1
        out.append((sums[i + 1] - sums[start]) / (i + 1 - start))
    return out


def _psnr_series(ax, x: Sequence[float], y: Sequence[float], label: str, color: str, linestyle: str = "-",
                 steps: Sequence[float] | None = None) -> None:
    """Raw values as faint dots, their :data:`SMOOTH`-step moving average as a line (``steps``: the
    step of each value when ``x`` is not the step, e.g. seconds); integer ticks on a step axis."""
    from matplotlib.ticker import MaxNLocator

    ax.plot(x, y, ".", color=color, alpha=0.3, markersize=3)
    ax.plot(x, moving_average(y, at=x if steps is None else steps), color=color, linestyle=linestyle, label=label,
            linewidth=1.5)
    if steps is None:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def plot_curves(
    path: Path,
    curves: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    xlabel: str = "step",
    ylabel: str = "train PSNR (dB)",
    title: str = "",
) -> None:
    """One line per labelled ``(x, y)`` series, written atomically as an image (suffix gives the format)."""
    fig, ax = _figure()
    for i, (label, (x, y)) in enumerate(curves.items()):
        _psnr_series(ax, x, y, label, f"C{i}", steps=None if xlabel == "step" else list(range(len(y))))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    if len(curves) > 1:
        ax.legend()
    _save(fig, path)


WEIGHTS = "model.weights"
WEIGHT_STYLES = {"bands": "-", "bands-channels": "--"}  # θ_B solid, θ_BC dashed (the paper's Fig. 1)
OTHER_STYLES = ("-.", ":")


def run_styles(runs: Mapping[str, Mapping[str, object]]) -> dict[str, tuple[str, str]]:
    """Label → ``(colour, line style)`` of a grid's runs (label → config values by dotted key): one colour
    per combination of the values that differ between runs (``train.K``, ``train.T``, …), in order of first
    appearance; when ``model.weights`` differs, it sets the style instead (bands solid, bands-channels
    dashed, any other dash-dotted, then dotted), else every line is solid."""
    varied = {k for k in set().union(*runs.values()) if len({repr(v.get(k)) for v in runs.values()}) > 1}
    colours: dict[tuple, str] = {}
    others: dict[str, str] = {}
    styles = {}
    for label, values in runs.items():
        combination = tuple(repr(values.get(k)) for k in sorted(varied - {WEIGHTS}))
        colour = colours.setdefault(combination, f"C{len(colours) % 10}")
        weights = str(values.get(WEIGHTS)) if WEIGHTS in varied else "bands"
        style = WEIGHT_STYLES.get(weights) or others.setdefault(weights, OTHER_STYLES[len(others) % 2])
        styles[label] = (colour, style)
    return styles


def plot_curve_panels(path: Path, runs: Mapping[str, Mapping[str, Sequence[float]]],
                      ylabel: str = "train PSNR (dB)",
                      styles: Mapping[str, tuple[str, str]] | None = None) -> None:
    """Runs (label → ``{"step", "seconds", "psnr"}`` series) as PSNR against steps (left) and against
    wall-clock seconds (right), one line per run in both panels; ``styles``: label → ``(colour, line
    style)`` (:func:`run_styles`), default one colour per run, solid."""
    styles = styles or {label: (f"C{i % 10}", "-") for i, label in enumerate(runs)}
    fig, axes = _figure(2)
    for ax, x in zip(axes[0], ("step", "seconds")):
        for label, series in runs.items():
            _psnr_series(ax, series[x], series["psnr"], label, *styles[label],
                         steps=None if x == "step" else series["step"])
        ax.set_xlabel("step" if x == "step" else "wall-clock seconds")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    if len(runs) > 1:  # outside the axes, right of the second panel: a grid's many runs hide no curve
        axes[0][-1].legend(loc="upper left", bbox_to_anchor=(1.02, 1), fontsize=8)
    _save(fig, path)


def plot_theta(path: Path, theta, curves: Mapping[str, tuple[Sequence[float], Sequence[float]]],
               channels: Sequence[str]) -> None:
    """``retune show --plot``: θ ``(scales, 3 bands, C)`` as one heat map per channel (scale × band,
    values printed), then the PSNR curves (label → ``(steps, psnr)``) when there are any."""
    import numpy as np

    n = theta.shape[-1]
    fig, axes = _grid(n + bool(curves), 2)
    low, top = float(theta.min()), float(theta.max())
    for c in range(n):
        ax = axes[c]
        image = ax.imshow(theta[:, :, c].numpy(), cmap="viridis", vmin=low, vmax=top, aspect="auto")
        for (j, b), v in np.ndenumerate(theta[:, :, c].numpy()):
            ax.text(b, j, f"{v:.3g}", ha="center", va="center", color="w" if v < (low + top) / 2 else "k", fontsize=8)
        ax.set_xticks(range(3), ["H", "V", "D"])
        ax.set_yticks(range(theta.shape[0]), [str(j + 1) for j in range(theta.shape[0])])
        ax.set_ylabel("scale j (1 = finest)")
        ax.set_title(f"θ, channel {channels[c]}" if n > 1 else "θ (all channels)")
        fig.colorbar(image, ax=ax)
    if curves:
        _psnr_panel(axes[n], curves)
    _save(fig, path)


def plot_parameters(path: Path, parameters: Mapping[str, tuple[Sequence[float], Sequence[float]]],
                    curves: Mapping[str, tuple[Sequence[float], Sequence[float]]]) -> None:
    """``retune show --plot`` for scalar parameters (PnP's σ and τ): each against the steps (log scale),
    then the PSNR curves (label → ``(steps, psnr)``) when there are any."""
    from matplotlib.ticker import MaxNLocator

    fig, axes = _grid(len(parameters) + bool(curves), 3)
    for i, (ax, (name, (x, y))) in enumerate(zip(axes, parameters.items())):
        ax.plot(x, y, ".-", color=f"C{i + 2}", markersize=3, linewidth=1)
        ax.set_yscale("log")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("step")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3, which="both")
    if curves:
        _psnr_panel(axes[len(parameters)], curves)
    _save(fig, path)


def _psnr_panel(ax, curves: Mapping[str, tuple[Sequence[float], Sequence[float]]]) -> None:
    for i, (label, (x, y)) in enumerate(curves.items()):
        _psnr_series(ax, x, y, label, f"C{i}")
    ax.set_xlabel("step")
    ax.set_ylabel("PSNR (dB)")
    ax.grid(alpha=0.3)
    ax.legend()


def plot_side_by_side(path: Path, panels: Mapping[str, tuple[object, str]]) -> None:
    """Images side by side (title → ``(image (3, H, W) in [0, 1], caption)``), e.g. observation | each
    checkpoint | clean, the caption under each (PSNR/SSIM); four to a row."""
    fig, axes = _grid(len(panels), 4)
    for ax, (title, (image, caption)) in zip(axes, panels.items()):
        ax.imshow(image.detach().cpu().clamp(0, 1).permute(1, 2, 0).numpy())
        ax.set_title(title)
        ax.set_xlabel(caption)
        ax.set_xticks([])
        ax.set_yticks([])
    _save(fig, path)


def plot_gradient_errors(path: Path, rows: list[dict]) -> None:
    """compare-grads figure. Left: the relative error to DEQ against T, one colour per K: ReTune (solid),
    unrolled (dash-dot), JFB (the plateau, dashed) and its Lemma-1 bound (relative to ‖g_DEQ‖, dotted).
    Right: the memory each kept for backpropagation against T (ReTune flat in T, unrolled growing).
    Log scales (T too when it spans a decade), the legend outside the axes."""
    deq = next(r for r in rows if r["method"] == "deq")
    deq_norm = sum(v * v for v in deq["gradient"]) ** 0.5
    fig, (errors, memory) = _grid(2, 2)
    for i, K in enumerate(sorted({r["K"] for r in rows if r["method"] == "retune"})):
        color = f"C{i}"
        for method, style in (("retune", "o-"), ("unrolled", "s-.")):
            series = sorted((r["T"], r["rel_err_deq"], r["peak_bytes"]) for r in rows
                            if r["method"] == method and r["K"] == K)
            if series:
                errors.plot([s[0] for s in series], [s[1] for s in series], style, color=color,
                            label=f"{'ReTune' if method == 'retune' else 'unrolled'} K={K}")
                memory.plot([s[0] for s in series], [s[2] / 2**20 for s in series], style, color=color)
        jfb = next(r for r in rows if r["method"] == "jfb" and r["K"] == K)
        errors.axhline(jfb["rel_err_deq"], color=color, linestyle="--", linewidth=1, label=f"JFB K={K}")
        if jfb["bound"] is not None:
            errors.axhline(jfb["bound"] / deq_norm, color=color, linestyle=":", linewidth=1,
                           label=f"Lemma 1 bound K={K}")
    restarts = [r["T"] for r in rows if r["method"] == "retune"]
    for ax, ylabel in ((errors, "‖g − g_DEQ‖ / ‖g_DEQ‖"), (memory, "kept for backpropagation (MiB)")):
        ax.set_xlabel("restarts T")
        ax.set_ylabel(ylabel)
        ax.set_yscale("log")
        if max(restarts) >= 10 * min(restarts):
            ax.set_xscale("log")
        ax.grid(alpha=0.3, which="both")
    memory.legend(*errors.get_legend_handles_labels(), fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1))
    _save(fig, path)
