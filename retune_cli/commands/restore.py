"""``retune restore``: restore one image with a checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .common import (
    DEVICE_OPTION,
    SEED_MAX,
    Accelerate,
    Threads,
    TrustCode,
    check_accelerate,
    console,
    device_from,
    set_threads,
    user_errors,
)

EPILOG = (
    "Examples:  retune restore runs/dn-b/theta.safetensors noisy.png -o clean.png   ·   "
    "retune restore runs/dn-b/theta.safetensors photo.png --simulate --seed 3 -o out.png --save-observation obs.png"
    "   ·   retune restore CKPT noisy.png -o clean.npy --tol 1e-6"
)


def restore(
    checkpoint: Annotated[Path, typer.Argument(help="theta.safetensors written by retune train.")],
    image: Annotated[Path, typer.Argument(help="Degraded image (or a clean one with --simulate).")],
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="Result: .png/.tif (8 or 16 bit) or .npy (float32, H×W×C).")
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
    bits: Annotated[int, typer.Option(help="Bit depth of PNG/TIFF outputs: 8 or 16.")] = 8,
    device: Annotated[str, DEVICE_OPTION] = "auto",
    accelerate: Accelerate = None,
    trust_code: TrustCode = False,
    threads: Threads = None,
) -> None:
    """Restore one image with a checkpoint's model and physics, and report the residual reached."""
    with user_errors():
        from ..errors import InputError
        from ..images import check_image_outputs, write_image
        from ..restore import load_model, restore_file

        output = output or image.with_name(f"{image.stem}.restored.png")
        if (T is not None and T < 1) or (tol is not None and not tol >= 0):
            raise InputError("--T must be at least 1 and --tol non-negative")
        inputs = (("the checkpoint", checkpoint), ("the image", image), ("--mask", mask), ("--kernel", kernel))
        check_image_outputs((("--output", output), ("--save-observation", save_observation)), bits, inputs)
        check_accelerate(accelerate)
        set_threads(threads)
        model = load_model(checkpoint, device_from(device), trust_code)
        operators = {"mask": mask, "kernel": kernel}
        result = restore_file(model, image, seed if simulate else None, T, tol, operators, scale, normalize_kernel,
                              accelerate)
        write_image(output, result.restored, bits)
        if save_observation is not None:
            write_image(save_observation, result.observation, bits)
        line = f"{result.restarts} restarts of Φ_{model.config.train.K}, residual {result.residual:.2e} → {output}"
        if result.psnr is not None:
            line += f"\nPSNR {result.psnr:.2f} dB (observation {result.psnr_observation:.2f} dB)"
        console.print(line, highlight=False)
