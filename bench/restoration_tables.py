"""The summary tables of ``experiment_restoration.py``: rows from its JSON document, printed as
Markdown."""

from __future__ import annotations


def tables(doc: dict) -> None:
    doc["tables"] = {"A": _rows_a(doc), "B": _rows_b(doc)}


def _rows_a(doc: dict) -> list[dict]:
    rows_a = []
    for name, s in doc["A"].items():
        rows_a.append({"physics": name, "row": "observation"} | s.get("observation", {}))
        for e in [s["initial"], *s["runs"]]:
            if "heldout" not in e:
                continue
            h = e["heldout"]
            rows_a.append(
                {
                    "physics": name,
                    "row": "initial θ" if e is s["initial"] else f"(K,T)=({e['K']},{e['T']})",
                    "psnr_own_T": h["own_T"]["psnr"],
                    "ssim_own_T": h["own_T"]["ssim"],
                    "psnr_T100": h["T100"]["psnr"],
                    "ssim_T100": h["T100"]["ssim"],
                    "psnr_T1000": h.get("T1000", {}).get("psnr"),
                    "ssim_T1000": h.get("T1000", {}).get("ssim"),
                    "residual_own_T": e["residual"]["own_T"],
                    "residual_T100": e["residual"]["T100"],
                    "residual_T1000": e["residual"].get("T1000"),
                    "train_seconds": e.get("train", {}).get("log_seconds"),
                    "train_psnr": e.get("train", {}).get("final_psnr"),
                }
            )
    return rows_a


def _rows_b(doc: dict) -> list[dict]:
    rows_b = []
    for name, s in doc["B"].items():
        if "observation" not in s:
            continue
        rows_b.append({"physics": name, "row": "observation"} | s["observation"])
        for e in [s["initial"], *s["runs"], s["denoiser"]]:
            row = (
                "initial (σ,τ)"
                if e is s["initial"]
                else f"learned denoiser ({e['K']},{e['T']})"
                if e is s["denoiser"]
                else f"(σ,τ) (K,T)=({e['K']},{e['T']})"
            )
            rows_b.append(
                {
                    "physics": name,
                    "row": row,
                    "psnr": e["heldout"]["own_T"]["psnr"],
                    "ssim": e["heldout"]["own_T"]["ssim"],
                    "sigma": e["learned"]["sigma"],
                    "tau": e["learned"]["tau"],
                    "residual_own_T": e["residual"]["own_T"],
                    "train_seconds": e.get("train", {}).get("log_seconds"),
                    "train_psnr": e.get("train", {}).get("final_psnr"),
                }
            )
        w = s["wavelet"]
        if "heldout" in w:
            rows_b.append(
                {
                    "physics": name,
                    "row": f"wavelet {w['label']} (same call)",
                    "psnr": w["heldout"]["own_T"]["psnr"],
                    "ssim": w["heldout"]["own_T"]["ssim"],
                }
            )
    return rows_b


def print_tables(doc: dict) -> None:
    def f(x, fmt):
        return "" if x is None else format(x, fmt)

    print(
        "\n| physics | row | PSNR own T | SSIM own T | PSNR T=100 | SSIM T=100 | PSNR T=1000 | res. own T "
        "| res. T=100 | res. T=1000 | train s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in doc["tables"]["A"]:
        if r["row"] == "observation":
            print(f"| {r['physics']} | observation | {r['psnr']:.2f} | {r['ssim']:.4f} | | | | | | | |")
            continue
        print(
            f"| {r['physics']} | {r['row']} | {r['psnr_own_T']:.2f} | {r['ssim_own_T']:.4f} | {r['psnr_T100']:.2f} "
            f"| {r['ssim_T100']:.4f} | {f(r['psnr_T1000'], '.2f')} | {r['residual_own_T']:.1e} | "
            f"{r['residual_T100']:.1e} | {f(r['residual_T1000'], '.1e')} | {f(r['train_seconds'], '.0f')} |"
        )
    print("\n| physics | row | PSNR | SSIM | σ | τ | res. own T | train s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in doc["tables"]["B"]:
        print(
            f"| {r['physics']} | {r['row']} | {r['psnr']:.2f} | {r['ssim']:.4f} | {f(r.get('sigma'), '.4f')} | "
            f"{f(r.get('tau'), '.4f')} | {f(r.get('residual_own_T'), '.1e')} | {f(r.get('train_seconds'), '.0f')} |"
        )
