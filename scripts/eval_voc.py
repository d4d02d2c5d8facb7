"""Pseudo-label mIoU on PASCAL VOC 2012 (train and val), the way the README's table is made.

With internet, every row of the README's table (openai/clip-vit-base-patch16):

  python scripts/eval_voc.py --voc-root VOCdevkit/VOC2012 --out runs/voc [--rows NAME ...]

Rows (``--rows``; default all), each against the published figure where there is one:
  chefer, chefer-auto          jaxseg's default pipeline, ground-truth / automatic labels
                               (refinement levels calibrated on 100 of the run's images)
  chefer-own                   the same, each image refined at its own levels
                               (--calibrate-levels 0, the default before 2026-12-07)
  clip-es                      CLIP-ES's maps, their background rule, no CRF (70.8 on train)
  clip-es-crf                  --preset clip-es: + their dense CRF (75.0 on train)
  clip-es-refine               CLIP-ES's maps + jaxseg's refinement
  clip-es-refine-own           the same at each image's own levels
  naclip, naclip-auto          --preset naclip with ground-truth / automatic labels
  naclip-open                  --preset naclip, every VOC class on every image: NACLIP's
                               open-vocabulary VOC21 setting (64.1 mIoU on val)

Mechanics check on the bundled development set (any checkpoint folder, e.g. a random one;
numbers are then meaningless):

  python scripts/eval_voc.py --coco-dev ../shared/data/coco-dev --model DIR --limit 8 \
      --out runs/dev

Each run is a plain `python -m jaxseg.segment` dataset run (resumable: rerun to continue)
followed by `python -m jaxseg.evaluate`; the commands are printed before they run. The table
goes to stdout and to OUT/results.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys


GT_LABELS = object()  # stands for the dataset's ground-truth image labels
ROWS = {
    "chefer": ("jaxseg (Chefer + refinement)", GT_LABELS, []),
    "chefer-own": ("jaxseg, each image at its own levels", GT_LABELS,
                   ["--calibrate-levels", "0"]),
    "chefer-auto": ("jaxseg, automatic labels", ["--labels", "auto", "--vocab", "voc"], []),
    "clip-es": ("CLIP-ES maps", GT_LABELS, ["--method", "clip-es", "--refine", "none"]),
    "clip-es-crf": ("CLIP-ES maps + CRF (--preset clip-es)", GT_LABELS, ["--preset", "clip-es"]),
    "clip-es-refine": ("CLIP-ES maps + jaxseg refinement", GT_LABELS,
                       ["--method", "clip-es", "--refine", "graphcut"]),
    "clip-es-refine-own": ("CLIP-ES maps + jaxseg refinement, own levels", GT_LABELS,
                           ["--method", "clip-es", "--refine", "graphcut",
                            "--calibrate-levels", "0"]),
    "naclip": ("NACLIP (--preset naclip)", GT_LABELS, ["--preset", "naclip"]),
    "naclip-auto": ("NACLIP, automatic labels", ["--labels", "auto", "--vocab", "voc"],
                    ["--preset", "naclip"]),
    "naclip-open": ("NACLIP, open vocabulary (all 20 classes)",
                    ["--labels", "all", "--vocab", "voc"], ["--preset", "naclip"]),
}


def run(command: list[str]) -> None:
    print("$ " + " ".join(shlex.quote(part) for part in command), flush=True)
    subprocess.run(command, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--voc-root", help="VOCdevkit/VOC2012 folder")
    where.add_argument("--coco-dev", help="the coco-dev folder (images/, masks_voc20/, "
                       "labels_voc20.json)")
    parser.add_argument("--model", default="openai/clip-vit-base-patch16")
    parser.add_argument("--splits", nargs="+", default=["train", "val"],
                        help="VOC splits (ImageSets/Segmentation/<split>.txt)")
    parser.add_argument("--limit", type=int, help="only the first N images of each run")
    parser.add_argument("--out", default="runs/voc")
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS))
    parser.add_argument("--segment-args", default="",
                        help="extra arguments for jaxseg.segment, e.g. '--batch-size 16'")
    args = parser.parse_args()

    # Per dataset: (name, its segment arguments, extra arguments for ground-truth labels, GT).
    if args.voc_root:
        datasets = [(split, ["--dataset", "voc", "--root", args.voc_root, "--split", split], [],
                     os.path.join(args.voc_root, "SegmentationClass")) for split in args.splits]
    else:
        datasets = [("coco-dev", ["--dataset", "folder", "--root", args.coco_dev],
                     ["--labels-file", os.path.join(args.coco_dev, "labels_voc20.json")],
                     os.path.join(args.coco_dev, "masks_voc20"))]
    extra = shlex.split(args.segment_args) + (["--limit", str(args.limit)] if args.limit else [])
    rows = []
    for name, dataset, gt_labels, gt in datasets:
        for row in args.rows:
            description, label_args, method_args = ROWS[row]
            label_args = gt_labels if label_args is GT_LABELS else label_args
            pred = os.path.join(args.out, f"{name}-{row}")
            run([sys.executable, "-m", "jaxseg.segment", *dataset, *label_args, *method_args,
                 "--model", args.model, "--out", pred, "--quiet", *extra])
            scores = os.path.join(args.out, f"{name}-{row}.scores.json")
            run([sys.executable, "-m", "jaxseg.evaluate", "--pred", pred, "--gt", gt,
                 "--classes", "voc", "--json", scores])
            with open(scores) as f:
                result = json.load(f)
            rows.append((name, description, result["num_images"], result["miou"],
                         result["pixel_accuracy"]))
    table = ["| set | pipeline | images | mIoU (%) | pixel acc. (%) |",
             "|---|---|---|---|---|"]
    table += [f"| {name} | {mode} | {count} | {miou:.1f} | {accuracy:.1f} |"
              for name, mode, count, miou, accuracy in rows]
    table.append(f"\nmodel: {args.model}")
    text = "\n".join(table) + "\n"
    print(text)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
