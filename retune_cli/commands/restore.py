"""``retune restore``: restore one image with a checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from .common import (
    DEVICE_OPTION,
    SEED_MAX,
    Accelerate,
    Threads,
    TrustCode,
    check_accelerate,
    console,
    device_from,
    err_console,
    progress_bar,
    set_threads,
    user_errors,
)

EPILOG = (
    "Examples:  retune restore runs/dn-b/theta.safetensors noisy.png -o clean.png   ·   "
    "retune restore runs/dn-b/theta.safetensors photo.png --simulate --seed 3 -o out.png --save-observation obs.png"
    "   ·   retune restore CKPT noisy.png -o clean.npy --tol 1e-6   ·   retune restore CKPT photos/ -o restored/"
    "   ·   retune restore CKPT noisy.png --sigma 0.1,0.12,0.09 -o clean.png"
)


def restore(
    checkpoint: Annotated[Path, typer.Argument(help="theta.safetensors written by retune train.")],
    image: Annotated[Path, typer.Argument(help="Degraded image (clean with --simulate), or a folder of them.")],
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="Result: .png/.tif (8 or 16 bit) or .npy (float32, H×W×C); "
                                  "for a folder, the folder of <stem>.restored.png.")
    ] = None,
    T: Annotated[
        int | None,
        typer.Option("--T", help="Restarts (default: the checkpoint's T, or its train.tol for jfb/deq runs)."),
    ] = None,
    tol: Annotated[
        float | None,
        typer.Option(help="Restart until ‖u_t − u_(t−1)‖/‖u_t‖ ≤ tol (u: the scheme's iterate; ≤ --T or 1000)."),
    ] = None,
    simulate: Annotated[bool, typer.Option(help="Degrade the clean IMAGE with the checkpoint's physics.")] = False,
    seed: Annotated[int, typer.Option(min=0, max=SEED_MAX, help="Noise seed for --simulate.")] = 0,
    save_observation: Annotated[Path | None, typer.Option(help="Also write the degraded image (same rules).")] = None,
    mask: Annotated[
        Path | None, typer.Option(help="Inpainting: image of the known pixels (white = kept), same size.")
    ] = None,
    kernel: Annotated[
        Path | None, typer.Option(help="Deblurring: .npy kernel, (h, w) shared or (3, h, w) per channel.")
    ] = None,
    normalize_kernel: Annotated[bool, typer.Option(help="Divide --kernel by its sums, not refuse it.")] = False,
    scale: Annotated[int | None, typer.Option(help="Super-resolution: the model's factor (checked).")] = None,
    sigma: Annotated[str | None, typer.Option(help="The image's noise level, one or per channel (0.1,0.12,0.09), "
                                              "if not the checkpoint's: thresholds scale by it (--simulate adds "
                                              "this noise).")] = None,
    reference: Annotated[
        Path | None, typer.Option(help="A real clean image of the result's size: print PSNR/SSIM against it.")
    ] = None,
    bits: Annotated[int, typer.Option(help="Bit depth of PNG/TIFF outputs: 8 or 16.")] = 8,
    quality: Annotated[int, typer.Option(min=1, max=100, help="JPEG quality of .jpg outputs.")] = 95,
    device: Annotated[str, DEVICE_OPTION] = "auto",
    accelerate: Accelerate = None,
    trust_code: TrustCode = False,
    threads: Threads = None,
    force: Annotated[bool, typer.Option(help="A folder restore: overwrite outputs that exist.")] = False,
) -> None:
    """Restore one image, or every image of a folder (-o OUTDIR), with a checkpoint's model and physics."""
    with user_errors():
        from ..errors import InputError

        if (T is not None and T < 1) or (tol is not None and not tol >= 0):
            raise InputError("--T must be at least 1 and --tol non-negative")
        operators = {"mask": mask, "kernel": kernel}
        job = _check_outputs(checkpoint, image, output, save_observation, reference, operators, force, bits)
        check_accelerate(accelerate)
        set_threads(threads)
        model = _load_model(checkpoint, device, trust_code, sigma)
        options = dict(simulate_seed=seed if simulate else None, T=T, tol=tol, operators=operators, scale=scale,
                       normalize_kernel=normalize_kernel, accelerate=accelerate, reference=reference,
                       on_warning=_warn)
        if job is None:
            _restore_one(model, image, output or image.with_name(f"{image.stem}.restored.png"), save_observation,
                         (bits, quality), options)
        else:
            _restore_folder(model, job, bits, options)


def _warn(line: str) -> None:
    err_console.print(f"[yellow]warning:[/] {escape(line)}", highlight=False)


def _check_outputs(checkpoint: Path, image: Path, output: Path | None, save_observation: Path | None,
                   reference: Path | None, operators: dict, force: bool, bits: int) -> object:
    """Check every output before any work (none may be an input); a folder's job (None for one image)."""
    from ..errors import InputError
    from ..images import check_image_outputs
    from ..restore import folder_job

    inputs = (("the checkpoint", checkpoint), ("the image folder" if image.is_dir() else "the image", image),
              *((f"--{flag}", path) for flag, path in operators.items()), ("--reference", reference))
    if not image.is_dir():
        output = output or image.with_name(f"{image.stem}.restored.png")
        check_image_outputs((("--output", output), ("--save-observation", save_observation)), bits, inputs)
        return None
    if save_observation or reference:
        raise InputError(f"--save-observation and --reference go with one image; {image} is a folder")
    job = folder_job(image, output, force)
    check_image_outputs((("-o", out) for _, out in job.pairs), bits, inputs)
    return job


def _load_model(checkpoint: Path, device: str, trust_code: bool, sigma: str | None):
    """The checkpoint's model; with ``--sigma``, moved to that noise level, as one line says."""
    from ..noise_level import parse_sigma
    from ..restore import load_model

    noise = None if sigma is None else parse_sigma(sigma)
    model = load_model(checkpoint, device_from(device), trust_code, noise)
    if model.noise is not None:
        console.print(model.noise.describe(), highlight=False)
    return model


def _restore_one(model, image: Path, output: Path, save_observation: Path | None, bits: tuple[int, int],
                 options: dict) -> None:
    """Restore one image; ``bits``: bit depth and JPEG quality of the written files."""
    from ..images import write_image
    from ..restore import restore_file

    with progress_bar() as progress:
        tol = options["tol"]
        task = progress.add_task("restarts" + (f" (until residual ≤ {tol:g})" if tol else ""), total=None)
        result = restore_file(model, image, **options,
                              on_restart=lambda t, most: progress.update(task, completed=t, total=most))
    write_image(output, result.restored, *bits)
    if save_observation is not None:
        write_image(save_observation, result.observation, *bits)
    console.print(_result_line(model, result, output), highlight=False)


def _result_line(model, result, output: Path) -> str:
    line = f"{result.restarts} restarts of Φ_{model.config.train.K}, residual {result.residual:.2e} → {output}"
    if result.psnr is not None:
        line += f"\nPSNR {result.psnr:.2f} dB (observation {result.psnr_observation:.2f} dB)"
        line += f" · SSIM {result.ssim:.3f} (observation {result.ssim_observation:.3f})"
    return line


def _restore_folder(model, job, bits: int, options: dict) -> None:
    from ..images import write_image
    from ..restore import restore_folder

    if job.skipped:
        err_console.print(f"[yellow]skipped non-image files:[/] {', '.join(p.name for p in job.skipped)}",
                          highlight=False)
    with progress_bar() as progress:
        task = progress.add_task("images", total=len(job.pairs))

        def write(output: Path, result) -> None:
            write_image(output, result.restored, bits)
            progress.console.print(_result_line(model, result, output), highlight=False, soft_wrap=True)

        restore_folder(model, job, write, lambda done, n, name: progress.update(task, completed=done,
                                                                                description=name), **options)
    console.print(f"{len(job.pairs)} images restored → {job.pairs[0][1].parent}", highlight=False)
