"""``retune models``: the ready-made models shipped with retune."""

from __future__ import annotations

from .common import console, user_errors

EPILOG = ("Examples:  retune models   ·   retune restore noisy.png --model denoise -o clean.png   ·   "
          "retune restore photo.png --model inpaint --mask holes.png --invert-mask -o out.png")


def models() -> None:
    """List the ready-made models: restore with one at once, no training (retune restore IMAGE --model NAME)."""
    with user_errors():
        from rich.table import Table

        from ..ready import READY, catalog

        table = Table("name", "restores", "preset", "trained on", "held-out PSNR", show_lines=True)
        for model in catalog():
            table.add_row(model.name, model.restores, model.preset, model.trained_on, model.heldout)
        console.print(table)
        console.print(f"Use: retune restore IMAGE --model NAME -o OUT.png. The checkpoints: {READY}/NAME.safetensors "
                      "(retune show, eval and train --init take them).", highlight=False)
