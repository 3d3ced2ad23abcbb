"""JSON report and PNG plot of `train adapters` (one pair per archetype)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def write_fit_report(
    archetype: str, rows: list[dict], summary: dict, config: dict, out_dir: str | Path
) -> tuple[Path, Path]:
    """Per player: off-policy estimate of return (base vs fitted), KL to base, episodes used."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / f"fit-{archetype}.json"
    improved = [r for r in rows if r["estimate_fitted"] > r["estimate_base"]]
    json_path.write_text(
        json.dumps(
            {
                "archetype": archetype,
                "players": len(rows),
                "players_improved": len(improved),
                "config": config,
                "recordings": summary,
                "per_player": rows,
            },
            indent=1,
        )
    )
    fig, axes = plt.subplots(3, 1, figsize=(max(6, 0.35 * len(rows) + 2), 8), sharex=True)
    x = np.arange(len(rows))
    names = [r["player"] for r in rows]
    axes[0].bar(x - 0.2, [r["estimate_base"] for r in rows], 0.4, label="base", color="tab:red")
    axes[0].bar(x + 0.2, [r["estimate_fitted"] for r in rows], 0.4, label="fitted adapter", color="tab:blue")
    axes[0].set_ylabel("return (PDWIS)")
    axes[0].legend(fontsize=8)
    axes[1].bar(x, [r["kl_to_base"] for r in rows], color="tab:purple")
    axes[1].axhline(config.get("kl_bound", 0), color="0.4", ls="--", lw=1)
    axes[1].set_ylabel("KL to base")
    axes[2].bar(x, [r["episodes"] for r in rows], color="tab:gray")
    axes[2].set_ylabel("episodes")
    axes[2].set_xticks(x, names, rotation=70, fontsize=7)
    fig.suptitle(f"train adapters — {archetype}: {len(improved)}/{len(rows)} players improved (off-policy estimate)")
    fig.tight_layout()
    png_path = out / f"fit-{archetype}.png"
    fig.savefig(png_path, dpi=90)
    plt.close(fig)
    return json_path, png_path
