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
    warn_skipped,
)

EPILOG = (
    "Examples:  retune restore runs/dn-b/theta.safetensors noisy.png -o clean.png   ·   "
    "retune restore runs/dn-b/theta.safetensors photo.png --simulate --seed 3 -o out.png --save-observation obs.png"
    "   ·   retune restore CKPT noisy.png -o clean.npy --tol 1e-6   ·   retune restore CKPT photos/ -o restored/"
    "   ·   retune restore CKPT noisy.png --sigma 0.1,0.12,0.09 -o clean.png"
    "   ·   retune restore CKPT noisy.png --sigma auto"
    "   ·   retune restore CKPT scratched.png --mask holes.png --invert-mask   ·   retune restore CKPT noisy/ -o out/ "
    "--reference clean/"
)


CheckpointArg = Annotated[Path, typer.Argument(help="theta.safetensors written by retune train (with --model: the "
                                                 "image).", show_default=False)]
ImageArg = Annotated[Path | None, typer.Argument(help="Degraded image (clean with --simulate), or a folder of them.",
                                                 show_default=False)]
ModelOption = Annotated[str | None, typer.Option("--model", help="A ready-made model (retune models) instead of a "
                                                 "checkpoint: retune restore IMAGE --model denoise; its noise level is "
                                                 "estimated (--sigma auto) unless given.")]
OutputOption = Annotated[Path | None, typer.Option("-o", "--output", help="Result: .png/.tif (8 or 16 bit) or .npy "
                                                   "(float32, H×W×C); for a folder, the folder of "
                                                   "<stem>.restored.png.")]
TOption = Annotated[int | None, typer.Option("--T", help="Restarts (default: the checkpoint's T, or its train.tol for "
                                             "jfb/deq runs).")]
TolOption = Annotated[float | None, typer.Option(help="Restart until ‖u_t − u_(t−1)‖/‖u_t‖ ≤ tol (u: the scheme's "
                                                 "iterate; ≤ --T or 1000).")]
MaskOption = Annotated[Path | None, typer.Option(help="Inpainting: image of the known pixels (white = kept), same "
                                                 "size.")]
KernelOption = Annotated[Path | None, typer.Option(help="Deblurring: .npy kernel, (h, w) shared or (3, h, w) per "
                                                   "channel, or a PSF image (.png…, divided by its sum).")]
BoundaryOption = Annotated[str | None, typer.Option(
    help="Deblurring: how the image extends past its edges — reflect, replicate or circular (default: reflect for a "
         "real image, as photographs are blurred; the checkpoint's with --simulate), or valid: nothing assumed, the "
         "photo's pixels are the blurs whose window lies inside a larger unknown image, solved for and cut back to "
         "the photo's size (fb/pd models).")]
SigmaOption = Annotated[str | None, typer.Option(
    help="The image's noise level (images in [0, 1]), one or per channel (0.1,0.12,0.09), or auto (estimated from "
         "the image, per channel), if not the checkpoint's: thresholds scale by it (--simulate adds this noise).")]
ReferenceOption = Annotated[Path | None, typer.Option(
    help="A real clean image of the result's size: print PSNR/SSIM of the written result against it; for a folder, "
         "a folder of the same names (a summary table).")]
BitsOption = Annotated[int | None, typer.Option(help="Bit depth of PNG/TIFF outputs: 8 or 16 (default: as the input).")]


def restore(
    checkpoint: CheckpointArg,
    image: ImageArg = None,
    model_name: ModelOption = None,
    output: OutputOption = None,
    T: TOption = None,
    tol: TolOption = None,
    simulate: Annotated[bool, typer.Option(help="Degrade the clean IMAGE with the checkpoint's physics.")] = False,
    seed: Annotated[int, typer.Option(min=0, max=SEED_MAX, help="Noise seed for --simulate.")] = 0,
    save_observation: Annotated[Path | None, typer.Option(help="Also write the degraded image (same rules).")] = None,
    mask: MaskOption = None,
    invert_mask: Annotated[bool, typer.Option(help="--mask is white on the holes (as most tools draw one).")] = False,
    kernel: KernelOption = None,
    normalize_kernel: Annotated[bool, typer.Option(help="Divide --kernel by its sums, not refuse it.")] = False,
    boundary: BoundaryOption = None,
    scale: Annotated[int | None, typer.Option(help="Super-resolution: the model's factor (checked).")] = None,
    sigma: SigmaOption = None,
    reference: ReferenceOption = None,
    bits: BitsOption = None,
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
        from ..restore import Output

        checkpoint, image, sigma = _model_and_image(checkpoint, image, model_name, sigma)
        if (T is not None and T < 1) or (tol is not None and not tol >= 0):
            raise InputError("--T must be at least 1 and --tol non-negative")
        operators = {"mask": mask, "kernel": kernel}
        job = _check_outputs(checkpoint, image, output, save_observation, reference, operators, force, bits)
        check_accelerate(accelerate)
        set_threads(threads)
        model = _load_model(checkpoint, device, trust_code, sigma, boundary or (None if simulate else "real"))
        options = dict(simulate_seed=seed if simulate else None, T=T, tol=tol, operators=operators, scale=scale,
                       normalize_kernel=normalize_kernel, accelerate=accelerate, on_warning=_warn,
                       sigma=sigma if sigma == "auto" else None, invert_mask=invert_mask)
        written = Output(output or image.with_name(f"{image.stem}.restored.png"), save_observation, bits, quality)
        if job is None:
            _restore_one(model, image, written, options | {"reference": reference})
        else:
            _restore_folder(model, job, written, options)


def _model_and_image(first: Path, second: Path | None, model_name: str | None, sigma: str | None):
    """``(checkpoint, image, sigma)``: ``CHECKPOINT IMAGE``, or ``IMAGE --model NAME`` (a shipped model,
    its noise level estimated unless ``--sigma`` is given)."""
    from ..errors import InputError
    from ..ready import ready_model

    if model_name is None:
        if second is None:
            raise InputError("give a checkpoint and an image (retune restore CKPT IMAGE), or an image and "
                             "--model NAME (retune models lists them; see retune restore --help)")
        return first, second, sigma
    if second is not None:
        raise InputError(f"--model {model_name} replaces the checkpoint: give only the image "
                         f"(retune restore IMAGE --model {model_name})")
    return ready_model(model_name).path, first, sigma or "auto"


def _warn(line: str) -> None:
    err_console.print(f"[yellow]warning:[/] {escape(line)}", highlight=False)


def _check_outputs(checkpoint: Path, image: Path, output: Path | None, save_observation: Path | None,
                   reference: Path | None, operators: dict, force: bool, bits: int | None) -> object:
    """Check every output before any work (none may be an input); a folder's job (None for one image)."""
    from ..errors import InputError
    from ..images import check_image_outputs
    from ..restore_folder import folder_job

    depth = 8 if bits is None else bits  # --bits 0 is checked (refused), not taken for the default
    inputs = (("the checkpoint", checkpoint), ("the image folder" if image.is_dir() else "the image", image),
              *((f"--{flag}", path) for flag, path in operators.items()), ("--reference", reference))
    if not image.is_dir():
        output = output or image.with_name(f"{image.stem}.restored.png")
        check_image_outputs((("--output", output), ("--save-observation", save_observation)), depth, inputs)
        return None
    if save_observation:
        raise InputError(f"--save-observation goes with one image; {image} is a folder")
    job = folder_job(image, output, force, reference=reference)
    check_image_outputs((("-o", out) for _, out in job.pairs), depth, inputs)
    return job


def _load_model(checkpoint: Path, device: str, trust_code: bool, sigma: str | None, boundary: str | None):
    """The checkpoint's model; with ``--sigma S``, moved to that noise level, as one line says (``auto``:
    per image, once it is read); its boundary set as :func:`~retune_cli.restore.load_model` says."""
    from ..noise_level import parse_sigma
    from ..restore import load_model

    noise = None if sigma in (None, "auto") else parse_sigma(sigma)
    model = load_model(checkpoint, device_from(device), trust_code, noise, boundary)
    if model.noise is not None:
        console.print(model.noise.describe(), highlight=False)
    if model.boundary is not None:
        why = " (a real photograph extends past its edges; --boundary circular restores as trained)"
        console.print(f"physics.boundary {model.boundary} for this restore" + (why if boundary == "real" else ""),
                      highlight=False)
    return model


def _restore_one(model, image: Path, output, options: dict) -> None:
    """Restore one image, written as ``output`` (:class:`~retune_cli.restore.Output`) says."""
    from ..restore import restore_file

    with progress_bar() as progress:
        tol = options["tol"]
        task = progress.add_task("restarts" + (f" (until residual ≤ {tol:g})" if tol else ""), total=None)
        result = restore_file(model, image, **options, output=output,
                              on_restart=lambda t, most: progress.update(task, completed=t, total=most))
    console.print(_result_line(model, result, output.path), highlight=False)


def _result_line(model, result, output: Path) -> str:
    line = f"estimated {result.noise.describe()}\n" if result.noise is not None else ""
    line += f"{result.restarts} restarts of Φ_{model.config.train.K}, residual {result.residual:.2e} → {output}"
    if result.psnr is not None:
        line += f"\nPSNR {result.psnr:.2f} dB (observation {result.psnr_observation:.2f} dB)"
        line += f" · SSIM {result.ssim:.3f} (observation {result.ssim_observation:.3f}), of the written image"
    return line


def _restore_folder(model, job, output, options: dict) -> None:
    from ..restore_folder import restore_folder, summary_rows

    warn_skipped(job.skipped)
    with progress_bar() as progress:
        task = progress.add_task("images", total=len(job.pairs))
        results = restore_folder(
            model, job, output, lambda done, n, name: progress.update(task, completed=done, description=name),
            lambda path, result: progress.console.print(_result_line(model, result, path), highlight=False,
                                                        soft_wrap=True),
            **options)
    console.print(f"{len(job.pairs)} images restored → {job.pairs[0][1].parent}", highlight=False)
    if rows := summary_rows(job, results):
        _print_table(rows)


def _print_table(rows: list[list[str]]) -> None:
    """The folder's scores against ``--reference``, one row per image and the mean."""
    from rich.table import Table

    table = Table("image", "PSNR", "SSIM", "observation PSNR", "observation SSIM")
    for i, row in enumerate(rows):
        table.add_row(*row, end_section=i == len(rows) - 2)
    console.print(table)
