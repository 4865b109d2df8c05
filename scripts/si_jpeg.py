"""SI versus JPEG quality on tiny10/test (the table in docs/si.md).

    python scripts/si_jpeg.py --per-class 10 [--model models/tiny10-classifier] [--judge models/tiny10-judge]

Every `per_class`-th-spaced test image of each class is JPEG-compressed with Pillow (4:2:0,
default tables) at each quality and scored with saic.semantics.si against its original; the
judge's top-1 accuracy on the decoded images (against the true labels) is reported too.
"""

from __future__ import annotations

import argparse
import io
import os
from pathlib import Path

import numpy as np
from PIL import Image

from saic.semantics.classifier import SemanticClassifier
from saic.semantics.si import SIScorer

REPO = Path(__file__).resolve().parents[1]
QUALITIES = (95, 90, 75, 50, 30, 20, 10, 5, 1)


def jpeg(im: np.ndarray, quality: int) -> tuple[np.ndarray, int]:
    buf = io.BytesIO()
    Image.fromarray(im).save(buf, "JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB")), len(buf.getvalue())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path(os.environ.get("SAIC_DATA_DIR", REPO / "../shared/data")))
    ap.add_argument("--model", type=Path, default=REPO / "models/tiny10-classifier")
    ap.add_argument("--judge", type=Path, default=REPO / "models/tiny10-judge")
    ap.add_argument("--per-class", type=int, default=10)
    args = ap.parse_args()
    scorer = SIScorer(SemanticClassifier(args.model, threads=1))
    judge = SemanticClassifier(args.judge, threads=1) if (args.judge / "manifest.json").exists() else None
    root = args.data / "tiny10" / "test"
    images, labels = [], []
    for label, name in enumerate(scorer.classifier.classes):
        files = sorted((root / name).iterdir())
        for path in files[:: len(files) // args.per_class][: args.per_class]:
            images.append(np.asarray(Image.open(path).convert("RGB")))
            labels.append(label)
    labels_a = np.asarray(labels)
    print(f"{len(images)} tiny10/test images, classifier {scorer.classifier.id}, params {scorer.params}")
    print("| JPEG q | bpp | PSNR dB | pixel P | feat. err e | semantic S | agreement A | **SI** | top-1 kept"
          " | task acc | judge acc |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for q in (None, *QUALITIES):
        if q is None:
            dec, nbytes = images, [0] * len(images)
        else:
            pairs = [jpeg(im, q) for im in images]
            dec, nbytes = [p[0] for p in pairs], [p[1] for p in pairs]
        res = scorer.score_batch(images, dec)
        acc = float(np.mean([scorer.classifier.classes.index(r.decoded_class) == y for r, y in zip(res, labels)]))
        jacc = float((judge.predict(dec)[0].argmax(1) == labels_a).mean()) if judge else float("nan")
        m = lambda k: float(np.mean([getattr(r, k) for r in res]))  # noqa: E731
        psnr = np.mean([min(r.psnr_db, 99.0) for r in res])
        bpp = 8 * np.mean(nbytes) / (64 * 64)
        print(f"| {'orig' if q is None else q} | {bpp:.2f} | {psnr:.2f} | {m('pixel'):.3f} | {m('feature_error'):.4f} "
              f"| {m('semantic'):.3f} | {m('agreement'):.3f} | **{m('si'):.3f}** | {m('top1_match'):.3f} | {acc:.3f} "
              f"| {jacc:.3f} |")


if __name__ == "__main__":
    main()
