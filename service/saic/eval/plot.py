"""RD plots: PSNR and MS-SSIM (dB) versus bpp for every codec in an rd.json document."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402

STYLE = {"jpeg420": ":", "jpeg444": ":", "webp": "--", "avif": "-."}


def plot_rd(doc: dict[str, Any], path: str | Path, max_bpp: float | None = 2.0) -> Path:
    """Write a two-panel figure (PSNR | MS-SSIM dB vs bpp, whole-file rate) to `path`."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    for name, res in doc["codecs"].items():
        pts = sorted(res["points"], key=lambda p: p["bpp"])
        if max_bpp is not None:
            pts = [p for p in pts if p["bpp"] <= max_bpp] or pts
        bpp = [p["bpp"] for p in pts]
        ours = name not in STYLE
        kw = dict(
            linestyle=STYLE.get(name, "-"), marker="o" if ours else ".", linewidth=2.2 if ours else 1.3,
            label=res["label"], zorder=3 if ours else 2,
        )
        axes[0].plot(bpp, [p["psnr"] for p in pts], **kw)
        axes[1].plot(bpp, [p["ms_ssim_db"] for p in pts], **kw)
    ds = doc.get("dataset", {})
    title = f"{Path(ds.get('path', '')).name} ({ds.get('n_images', '?')} images)"
    for ax, ylabel in zip(axes, ("PSNR-RGB (dB)", "MS-SSIM (dB)  = -10 log10(1 - MS-SSIM)")):
        ax.set_xlabel("bits per pixel (whole file)")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
