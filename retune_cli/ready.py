"""Ready-made models shipped in the package: θ checkpoints (kilobytes) trained by ``bench/ready_models.py``
on public photographs, listed by ``retune models`` and used as ``retune restore IMAGE --model NAME``.
``retune_cli/ready/catalog.yaml`` says, per name, its file, preset, what it restores and how, what it was
trained on and its held-out PSNR."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import InputError

READY = Path(__file__).parent / "ready"
CATALOG = READY / "catalog.yaml"


@dataclass(frozen=True)
class ReadyModel:
    name: str
    file: str
    preset: str
    restores: str
    trained_on: str
    heldout: str

    @property
    def path(self) -> Path:
        return READY / self.file


def catalog() -> list[ReadyModel]:
    """The shipped models, in the catalog's order (none if the catalog is missing)."""
    import yaml

    if not CATALOG.is_file():
        return []
    entries = yaml.safe_load(CATALOG.read_text(encoding="utf-8")) or {}
    return [ReadyModel(name, **entry) for name, entry in entries.items()]


def ready_model(name: str) -> ReadyModel:
    """The shipped model ``name``; refused naming the ones there are, or a missing file (a broken install)."""
    models = {m.name: m for m in catalog()}
    if name not in models:
        raise InputError(f"--model {name!r}: no such ready-made model; choose one of {', '.join(models) or 'none'} "
                         "(retune models lists them)")
    model = models[name]
    if not model.path.is_file():
        raise InputError(f"--model {name}: its file {model.path} is missing; reinstall retune")
    return model
