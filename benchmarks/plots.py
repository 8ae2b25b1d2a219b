"""The benchmark's PNG plots: latency per backend and batch, Dice per structure and backend."""

from __future__ import annotations

from pathlib import Path

from benchmarks.markdown import threads_text
from benchmarks.summary import TABLE2_COLUMNS
from benchmarks.variants import short_label


def make_plots(doc: dict, out_dir: Path) -> list[Path]:
    """latest_latency.png (p50 bars, p95 whiskers, per backend and batch) and latest_dice.png
    (Dice per structure per backend). Empty list when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    paths = []
    rows = [x for x in doc["rows"] if x["status"] == "ok" and x["slice_ms_p50"] is not None]
    if rows:
        labels = list(dict.fromkeys(x["label"] for x in rows))
        short = {x["label"]: short_label(x["backend"], x["precision"], x["device"])
                 for x in rows}
        batches = sorted({x["batch"] for x in rows})
        fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(labels)), 4))
        width = 0.8 / len(batches)
        for j, b in enumerate(batches):
            xs, ys, errs = [], [], []
            for i, lab in enumerate(labels):
                x = next((r for r in rows if r["label"] == lab and r["batch"] == b), None)
                if x:
                    xs.append(i + (j - (len(batches) - 1) / 2) * width)
                    ys.append(x["slice_ms_p50"])
                    errs.append(max(x["slice_ms_p95"] - x["slice_ms_p50"], 0))
            ax.bar(xs, ys, width, yerr=[[0] * len(errs), errs], capsize=3, label=f"batch {b}")
        ax.set_xticks(range(len(labels)), [short[lab] for lab in labels], fontsize=8)
        size = doc["settings"]["size"]
        ax.set_ylabel(f"ms per {size}x{size} slice (p50, whisker p95)")
        ax.set_title(f"scar-net latency per backend ({doc['machine']['cpu']}, "
                     f"{threads_text(doc['machine']['threads'])})", fontsize=9)
        ax.legend()
        fig.tight_layout()
        p = out_dir / "latest_latency.png"
        fig.savefig(p, dpi=120)
        plt.close(fig)
        paths.append(p)
    tables = doc["accuracy"]["tables"]
    if tables:
        cols = list(TABLE2_COLUMNS)
        fig, ax = plt.subplots(figsize=(11, 4.6))
        width = 0.8 / len(tables)
        for j, (k, t) in enumerate(tables.items()):
            xs = [i + (j - (len(tables) - 1) / 2) * width for i in range(len(cols))]
            ys = [t["dice"][c] if t["dice"][c] is not None else 0.0 for c in cols]
            ax.bar(xs, ys, width, label=doc["labels"][k])
        ax.set_xticks(range(len(cols)), cols, fontsize=8)
        ax.set_ylim(0, 1)
        ax.set_ylabel("3D Dice (val)")
        ax.set_title("Dice per structure and backend (no bar: not labelled in these cases)",
                     fontsize=9)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.1),
                  ncol=min(len(tables), 4), frameon=False)
        fig.tight_layout()
        p = out_dir / "latest_dice.png"
        fig.savefig(p, dpi=120)
        plt.close(fig)
        paths.append(p)
    return paths
