"""The configurations of ``bench_training.py``: each one ready to take a training step, timed by phase,
and measured for memory in a fresh process (``bench_training.py --worker NAME``).

ReTune and unrolled steps are the project's :func:`retune_cli.train.train_step` (solve with the gradient
mode, MSE, backward, rank averaging, finite checks, Adam, PSNR), on the state of
:func:`retune_cli.train.new_state`. ``train_step`` is one call, so the *timed* rounds, which report the
forward / backward / Adam split, run the same engine calls with a clock between them:
``retune_cli.core.hypergrad.solve(scheme, obs, options, mode).x``, the MSE, ``backward()`` and the
state's Adam (what ``train_step`` adds, a PSNR and finiteness checks, is ~1 % of a step). Warm-up,
memory and profile steps are ``train_step`` itself; memory counts the tensors saved for backward still
held when backward starts (the first time autograd unpacks one).
"""

from __future__ import annotations

import resource
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import torch
from common import limit_threads, pick_device, synchronize

PRESET = "denoise-wavelet-b"
SEED = 0


@dataclass(frozen=True)
class Sizes:
    """Batch and crop of the step (a full run: 4×3×256²; ``--quick``: 1×3×32²)."""

    batch: int = 4
    crop: int = 256


QUICK_SIZES = Sizes(1, 32)

CASES: dict[str, dict] = {
    "retune_K1_T1": {"kind": "retune", "K": 1, "T": 1, "gradient": "retune"},
    "retune_K1_T10": {"kind": "retune", "K": 1, "T": 10, "gradient": "retune"},
    "retune_K10_T1": {"kind": "retune", "K": 10, "T": 1, "gradient": "retune"},
    "retune_K10_T10": {"kind": "retune", "K": 10, "T": 10, "gradient": "retune"},
    "unrolled_K10_T10": {"kind": "retune", "K": 10, "T": 10, "gradient": "unrolled"},
    # memory only (is the peak flat in T beyond 10?), not timed
    "retune_K1_T100": {"kind": "retune", "K": 1, "T": 100, "gradient": "retune", "timed": False},
    "retune_K10_T100": {"kind": "retune", "K": 10, "T": 100, "gradient": "retune", "timed": False},
    "nograd_solve_K10_T10": {"kind": "nograd", "K": 10, "T": 10},
    "deepinv_pgd_unfold_100": {"kind": "deepinv", "iterations": 100, "objective": True},
    "deepinv_pgd_unfold_100_no_objective": {"kind": "deepinv", "iterations": 100, "objective": False},
}
DEEPINV = (
    "PGD(WaveletPrior(level=4, wv='db4', p=1, mode='zero'), L2(), stepsize=1, lambda=0.5, max_iter=100, "
    "unfold=True, trainable_params=['lambda', 'stepsize']) on deepinv's Denoising() physics"
)


def learning_rate() -> float:
    from retune_cli.config import resolve

    return resolve(PRESET).train.lr


def make_batch(device: torch.device, sizes: Sizes):
    """``(clean, observation)``: the preset's first training batch at ``sizes``, noised by its physics."""
    from retune_cli.config import resolve
    from retune_cli.data import ImageFolder, derive_seed, training_batch
    from retune_cli.models import physics_from

    clean = training_batch(ImageFolder.open(None), 0, sizes.batch, sizes.crop, SEED)
    with torch.no_grad():
        obs = physics_from(resolve(PRESET)).simulate(clean, derive_seed(SEED, "noise", 0))
    return clean.to(device), obs.to(device)


@dataclass
class Case:
    """A configuration: ``forward()`` returns the loss (or the graph-free solution); ``train`` is the
    project's whole step where it has one (else the step is forward, backward and ``optimizer``)."""

    name: str
    forward: Callable[[], torch.Tensor]
    optimizer: torch.optim.Optimizer | None = None
    train: Callable[[], object] | None = None

    def step(self) -> None:
        if self.train is not None:
            self.train()
            return
        loss = self.forward()
        if self.optimizer is not None:
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()

    def timed_step(self, device: torch.device) -> dict[str, float]:
        """Seconds of the whole step and of its forward, backward and Adam phases."""
        synchronize(device)
        t0 = time.perf_counter()
        loss = self.forward()
        synchronize(device)
        t1 = t2 = time.perf_counter()
        if self.optimizer is not None:
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            synchronize(device)
            t2 = time.perf_counter()
            self.optimizer.step()
            synchronize(device)
        t3 = time.perf_counter()
        return {"step": t3 - t0, "forward": t1 - t0, "backward": t2 - t1, "optimizer": t3 - t2}


def _engine_case(name: str, spec: dict, clean: torch.Tensor, obs, device: torch.device) -> Case:
    from retune_cli.config import resolve
    from retune_cli.core.hypergrad import restore, solve
    from retune_cli.models import solve_options
    from retune_cli.train import new_state, train_step

    config = resolve(PRESET)
    state = new_state(config, device, None)
    options = solve_options(config.train, K=spec["K"], T=spec["T"])
    if spec["kind"] == "nograd":
        return Case(name, lambda: restore(state.scheme, obs, options.K, options.T).x)
    mode = spec["gradient"]

    def forward() -> torch.Tensor:
        return torch.mean((solve(state.scheme, obs, options, mode).x - clean) ** 2)

    return Case(name, forward, state.optimizer, lambda: train_step(state, clean, obs, options, mode))


def _deepinv_case(name: str, spec: dict, clean: torch.Tensor, obs, device: torch.device) -> Case:
    import deepinv as dinv

    prior = dinv.optim.prior.WaveletPrior(level=4, wv="db4", p=1, device=str(device))
    # threshold = 0.1 (WaveletPrior.prox default ths) · λ · stepsize = 0.05 = the preset's init_lambda
    model = dinv.optim.PGD(
        prior=prior,
        data_fidelity=dinv.optim.data_fidelity.L2(),
        stepsize=1.0,
        lambda_reg=0.5,
        max_iter=spec["iterations"],
        unfold=True,
        trainable_params=["lambda", "stepsize"],
    ).to(device)
    if not spec["objective"]:
        model.fixed_point.iterator.cost_fn = None  # skip F(x_k) = f + λg, evaluated by default every iteration
    physics = dinv.physics.Denoising(device=device)  # A = I, as the preset's physics

    def forward() -> torch.Tensor:
        return torch.mean((model(obs.y, physics) - clean) ** 2)

    return Case(name, forward, torch.optim.Adam(model.parameters(), lr=learning_rate()))


def build_case(name: str, clean: torch.Tensor, obs, device: torch.device) -> Case:
    spec = CASES[name]
    build = _deepinv_case if spec["kind"] == "deepinv" else _engine_case
    return build(name, spec, clean, obs, device)


def maxrss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def measure_memory(name: str, sizes: Sizes) -> dict:
    """Worker: the first step of ``name`` in this fresh process, with its memory figures."""
    limit_threads()
    device = pick_device()
    case = build_case(name, *make_batch(device, sizes), device)
    packed: dict[int, int] = {}
    held: list[tuple[weakref.ref, int, int]] = []
    live: dict[int, int] = {}
    backward_started = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        packed[storage.data_ptr()] = storage.nbytes()
        held.append((weakref.ref(t), storage.data_ptr(), storage.nbytes()))
        return t

    def unpack(t: torch.Tensor) -> torch.Tensor:
        if not backward_started:  # backward starts: what the forward saved and still holds
            backward_started.append(True)
            live.update({ptr: nbytes for ref, ptr, nbytes in held if ref() is not None})
        return t

    synchronize(device)
    rss_before = maxrss_bytes()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        cuda_before = torch.cuda.memory_allocated(device)
    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        case.step()
    synchronize(device)
    out = {
        "saved_bytes": sum(live.values()),
        "saved_storages": len(live),
        "saved_bytes_all_packed": sum(packed.values()),
        "rss_before_bytes": rss_before,
        "rss_peak_delta_bytes": maxrss_bytes() - rss_before,
    }
    if device.type == "cuda":
        out["cuda_peak_bytes"] = torch.cuda.max_memory_allocated(device) - cuda_before
    return out


def profile_step(case: Case, device: torch.device, top: int = 12) -> dict:
    """Self time per op over one step (torch.profiler), largest first."""
    from common import op_profile

    rows, total = op_profile(case.step, device)
    return {
        "total_self_cpu_ms": total / 1e3,
        "top_ops": [
            {
                "op": e.key,
                "calls": e.count,
                "self_cpu_ms": e.self_cpu_time_total / 1e3,
                "share": e.self_cpu_time_total / total if total else None,
            }
            for e in rows[:top]
        ],
    }
