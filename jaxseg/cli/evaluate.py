"""Command line: scores predicted label maps against ground-truth masks.

Usage::

    python -m jaxseg.evaluate --pred DIR --gt DIR [--classes voc|FILE] [--ignore 255]
                              [--json FILE] [--debug]

Prints per-class IoU, precision, recall and ground-truth pixels, mIoU and pixel accuracy
(percentages); the rules are those of :func:`jaxseg.metrics.evaluate`. Exit status: 0
scored, 1 an input could not be scored (one line saying which and why).
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from typing import Sequence

from jaxseg.metrics import evaluate
from jaxseg.run.imageio import write_json


def format_table(result: dict) -> str:
    """Human-readable table of an :func:`evaluate` / :meth:`ConfusionMatrix.scores` result."""

    def cell(value):
        return "      -" if value is None else f"{value:7.2f}"

    width = max(12, *(len(row["name"]) for row in result["classes"]))
    lines = [f"{'class':<{width}}     IoU    prec  recall    GT pixels"]
    for row in result["classes"]:
        if row["name"] in result["absent_classes"]:
            continue
        note = "" if row["in_mean"] else "  (excluded from the mean)"
        lines.append(f"{row['name']:<{width}} {cell(row['iou'])} {cell(row['precision'])} "
                     f"{cell(row['recall'])} {row['gt_pixels']:12d}{note}")
    counted = sum(row["in_mean"] for row in result["classes"])
    miou = "n/a" if result["miou"] is None else f"{result['miou']:.2f}"
    lines.append(f"mIoU {miou} over {counted} of {len(result['classes'])} classes")
    if result["absent_classes"]:
        lines.append(f"excluded from the mean, absent from both prediction and ground truth "
                     f"({len(result['absent_classes'])}): {', '.join(result['absent_classes'])}")
    accuracy = "n/a" if result["pixel_accuracy"] is None else f"{result['pixel_accuracy']:.2f}"
    images = f", {result['num_images']} images" if "num_images" in result else ""
    lines.append(f"pixel accuracy {accuracy} ({result['num_pixels']} scored pixels{images})")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m jaxseg.evaluate",
        description="Confusion-matrix mIoU of predicted label maps against ground-truth masks.")
    parser.add_argument("--pred", required=True, help="folder of <stem>.png (+ .json) predictions")
    parser.add_argument("--gt", required=True, help="folder of <stem>.png ground-truth masks")
    parser.add_argument("--classes", default="voc", help="'voc' (default), a .yaml with "
                        "'classes: {id: name}', or a text file with class id i on line i")
    parser.add_argument("--ignore", type=int, default=255,
                        help="ground-truth value that is not scored (default 255; -1: none)")
    parser.add_argument("--json", metavar="FILE", help="also write the scores to this JSON file")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    args = parser.parse_args(argv)
    # Checked before the scoring, which can take minutes, rather than failing after it.
    if args.json and (os.path.isdir(args.json) or not os.access(
            os.path.dirname(os.path.abspath(args.json)), os.W_OK | os.X_OK)):
        print(f"jaxseg.evaluate: error: --json {args.json}: cannot write a file there; pass a "
              f"file path in an existing folder you can write to", file=sys.stderr)
        return 1
    try:
        result = evaluate(args.pred, args.gt, args.classes, args.ignore,
                          on_warning=lambda message: print(f"warning: {message}", file=sys.stderr))
        print(format_table(result))
        if args.json:
            write_json(args.json, result)  # atomically: never a half-written file
    except (ValueError, OSError) as error:
        if args.debug:
            traceback.print_exc()
        print(f"jaxseg.evaluate: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
