"""PnP-FB with the DRUNet denoiser: time per training step and memory of ReTune against T, on CPU
and, when a GPU is present, on CUDA.

For each PnP preset (inpaint-pnp, deblur-pnp, inpaint-pnp-denoiser, deblur-pnp-denoiser) and each
device, one training step (the project's ``retune_cli.train.train_step``: solve + MSE + backward +
Adam) is timed (median of --rounds after a warm-up) for (K, T) = (K, 1) and (K, 10) with the ReTune
gradient; each round observes the batch anew (``physics.simulate``, seed 0). Memory: the bytes
autograd saves for backward (retune_cli.core.memory.saved_tensor_bytes) on every device, and
torch.cuda.max_memory_allocated on CUDA. Goal: ReTune's memory at T=10 over T=1 ≤ 1.1.
Writes bench/results/pnp.json.

    python bench/bench_pnp.py [--crop 64] [--batch-size 4] [--K 10] [--rounds 3] [--json PATH] [--quick]

``--quick``: a smoke run (crop 32, batch 1, K 2, 1 round, output in /tmp/retune-bench/pnp.json).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from common import flags, limit_threads, machine_info, parse_args, write_json

from retune_cli.config import resolve
from retune_cli.core.memory import saved_tensor_bytes
from retune_cli.data import ImageFolder, training_batch
from retune_cli.models import solve_options
from retune_cli.train import new_state, train_step

PRESETS = ("inpaint-pnp", "deblur-pnp", "inpaint-pnp-denoiser", "deblur-pnp-denoiser")


def one_step(preset: str, device: torch.device, K: int, T: int, args: argparse.Namespace) -> dict:
    config = resolve(preset)
    state = new_state(config, device, None)
    options = solve_options(config.train, K=K, T=T)
    clean = training_batch(ImageFolder.open(None), 0, args.batch_size, args.crop, 0).to(device)
    times, saved, peak = [], 0, 0
    for round_ in range(args.rounds + 1):
        with torch.no_grad():
            obs = state.scheme.physics.simulate(clean, 0)
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        start = time.perf_counter()
        with saved_tensor_bytes() as counter:  # the backward inside saves nothing more
            train_step(state, clean, obs, options, "retune")
        if device.type == "cuda":
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated() - base
        if round_:  # the first round is the warm-up
            times.append(time.perf_counter() - start)
        saved = counter[0]
    return {"K": K, "T": T, "seconds_per_step": statistics.median(times), "saved_bytes": saved, "cuda_peak_bytes": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crop", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--K", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    args = parse_args(parser, "pnp.json", {"crop": 32, "batch_size": 1, "K": 2, "rounds": 1})
    limit_threads()
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    results = {}
    for device in devices:
        for preset in PRESETS:
            rows = [one_step(preset, device, args.K, T, args) for T in (1, 10)]
            results[f"{device.type}/{preset}"] = {
                "rows": rows,
                "saved_bytes_T10_over_T1": rows[1]["saved_bytes"] / rows[0]["saved_bytes"],
                "cuda_peak_T10_over_T1": rows[1]["cuda_peak_bytes"] / rows[0]["cuda_peak_bytes"]
                if rows[0]["cuda_peak_bytes"]
                else None,
            }
            ratio = results[f"{device.type}/{preset}"]["saved_bytes_T10_over_T1"]
            print(
                f"{device.type:4} {preset:22} T=1 {rows[0]['seconds_per_step']:.2f}s  "
                f"T=10 {rows[1]['seconds_per_step']:.2f}s  memory T10/T1 {ratio:.3f}"
            )
    if len(devices) == 2:
        for preset in PRESETS:
            cpu, cuda = results[f"cpu/{preset}"]["rows"][1], results[f"cuda/{preset}"]["rows"][1]
            results[f"speedup_cuda_over_cpu/{preset}"] = cpu["seconds_per_step"] / cuda["seconds_per_step"]
    write_json(
        args.json,
        {
            "benchmark": "PnP-FB DRUNet training step",
            "machine": machine_info(devices[-1]),
            "setup": flags(args),
            "results": results,
        },
    )


if __name__ == "__main__":
    main()
