"""The summary table of ``experiment_denoise.py``: rows from its results, printed as Markdown."""

from __future__ import annotations

from experiment_common import scores

from retune_cli.evaluate import OBSERVATION


def table(eq, runs: list[dict], initial: list[dict], scalar: dict, t_eq: int) -> list[dict]:
    """Rows (PSNR/SSIM at equilibrium unless named ``*_own_T``): observation, initial θ, best scalar λ, runs."""
    rows = [{"row": "observation"} | scores(eq, OBSERVATION)]
    for e in initial:
        h = e["heldout"]["equilibrium"]
        rows.append({"row": f"initial θ {e['preset']} (λ={e['init_lambda']:g})", "psnr": h["psnr"], "ssim": h["ssim"]})
    for preset, s in scalar.items():
        b = s["best"]
        rows.append({"row": f"best scalar {preset} (λ={b['lambda']:.4g})", "psnr": b["psnr"], "ssim": b["ssim"]})
    for e in runs:
        o, q = e["heldout"]["own_T"], e["heldout"]["equilibrium"]
        rows.append(
            {
                "row": f"{e['preset']} (K,T)=({e['K']},{e['T']})",
                "psnr_own_T": o["psnr"],
                "ssim_own_T": o["ssim"],
                "psnr": q["psnr"],
                "ssim": q["ssim"],
                "residual_own_T": e["residual"]["by_T"][str(e["T"])],
                "residual_T200": e["residual"]["by_T"][str(t_eq)],
                "omega_K": e["contraction"]["omega_K"],
                "train_seconds": e["train"]["seconds"],
                "train_psnr": e["train"]["final_psnr"],
            }
        )
    return rows


def print_table(doc: dict) -> None:
    s = doc["setup"]
    t_eq = s["T_equilibrium"]
    print(
        f"\nHeld-out CBSD68 ({len(s['heldout_images'])} images), {s['steps']} Adam steps, crop {s['crop']}, "
        f"equilibrium = T {t_eq}\n"
    )
    print(
        f"| θ | (K,T) | PSNR own T | SSIM own T | PSNR eq. | SSIM eq. | Δ eq.−own | residual own T | residual T={t_eq} "
        "| ω^K | train s | train PSNR |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for e in doc["runs"]:
        o, q = e["heldout"]["own_T"], e["heldout"]["equilibrium"]
        print(
            f"| {e['weights']} | ({e['K']},{e['T']}) | {o['psnr']:.2f} | {o['ssim']:.4f} | {q['psnr']:.2f} | "
            f"{q['ssim']:.4f} | {q['psnr'] - o['psnr']:+.3f} | {e['residual']['by_T'][str(e['T'])]:.1e} | "
            f"{e['residual']['by_T'][str(t_eq)]:.1e} | {e['contraction']['omega_K']:.3f} | "
            f"{e['train']['seconds']:.1f} | {e['train']['final_psnr']:.2f} |"
        )
    for e in doc["initial"]:
        q = e["heldout"]["equilibrium"]
        print(
            f"| initial {e['preset']} (λ={e['init_lambda']:g}) | – | | | {q['psnr']:.2f} | {q['ssim']:.4f} | | | "
            f"{e['residual']['by_T'][str(t_eq)]:.1e} | {e['contraction']['omega_K']:.3f} | | |"
        )
    for preset, sc in doc["scalar"].items():
        b = sc["best"]
        print(f"| best scalar {preset} (λ={b['lambda']:.4g}) | – | | | {b['psnr']:.2f} | {b['ssim']:.4f} | | | | | | |")
    o = doc["observation"]
    print(f"| observation | – | | | {o['psnr']:.2f} | {o['ssim']:.4f} | | | | | | |")
