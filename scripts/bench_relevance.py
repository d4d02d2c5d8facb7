"""Relevance speed: jaxseg vs two PyTorch implementations, ViT-B/16 with random weights.

For V images (TTA variants) of 224 px and K classes, times per call:
  jaxseg      jaxseg.relevance (one jitted program; one forward, vmapped pullbacks)
  forward     jaxseg's pure image forward of the same V images (the floor)
  notebook    PyTorch shaped like the reference notebook: one forward + backward per pair
  careful     PyTorch: one forward per batch, one backward per class
Also compile time and peak RSS. Prints a markdown table (and JSON with --json).

  python scripts/bench_relevance.py [--repeats 3] [--skip-notebook]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(__file__))

import jax  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import jaxseg  # noqa: E402
from benchlib import median_seconds, peak_rss_mib  # noqa: E402
from checkpoints import VIT_B16_VISION, VIT_B_TEXT, make_checkpoint  # noqa: E402
from torch_baselines import careful, notebook_style  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--variants", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--classes", type=int, nargs="+", default=[1, 5, 10])
    parser.add_argument("--start-layer", type=int, default=-1)
    parser.add_argument("--skip-notebook", action="store_true")
    parser.add_argument("--json", help="also write the rows as JSON here")
    args = parser.parse_args()

    folder = tempfile.mkdtemp(prefix="vit-b16-")
    model = make_checkpoint(folder, vision=VIT_B16_VISION, text=VIT_B_TEXT, projection_dim=512)
    clip = jaxseg.load_clip(folder)
    rng = np.random.RandomState(0)
    rows = []
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), start_layer={args.start_layer}", flush=True)
    for variants in args.variants:
        pixels = rng.randn(variants, 224, 224, 3).astype(np.float32)
        pixels_nchw = torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous()
        forward = lambda: jax.block_until_ready(clip.encode_image(pixels))  # noqa: E731
        forward_s = median_seconds(forward, args.repeats)
        for classes in args.classes:
            texts = rng.randn(classes, 512).astype(np.float32)
            texts_t = torch.from_numpy(texts)
            start = time.perf_counter()
            jax.block_until_ready(jaxseg.relevance(clip, pixels, texts, args.start_layer))
            compile_s = time.perf_counter() - start
            ours = median_seconds(lambda: jax.block_until_ready(
                jaxseg.relevance(clip, pixels, texts, args.start_layer)), args.repeats)
            careful_s = median_seconds(lambda: careful(model, pixels_nchw, texts_t, args.start_layer),
                              args.repeats)
            notebook_s = float("nan") if args.skip_notebook else median_seconds(
                lambda: notebook_style(model, pixels_nchw, texts_t, args.start_layer), 1)
            row = dict(V=variants, K=classes, jaxseg_s=ours, forward_s=forward_s,
                       careful_s=careful_s, notebook_s=notebook_s, compile_s=compile_s)
            rows.append(row)
            print(json.dumps(row), flush=True)
    print("\n| V | K | jaxseg s/img | forward s/img | relevance/forward | careful s/img | "
          "notebook s/img | vs careful | vs notebook | compile s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        v = r["V"]
        print(f"| {v} | {r['K']} | {r['jaxseg_s'] / v:.3f} | {r['forward_s'] / v:.3f} | "
              f"{r['jaxseg_s'] / r['forward_s']:.2f}x | {r['careful_s'] / v:.3f} | "
              f"{r['notebook_s'] / v:.3f} | {r['careful_s'] / r['jaxseg_s']:.2f}x | "
              f"{r['notebook_s'] / r['jaxseg_s']:.2f}x | {r['compile_s']:.1f} |")
    for v in args.variants:
        by_k = {r["K"]: r["jaxseg_s"] for r in rows if r["V"] == v}
        if 1 in by_k and 10 in by_k:
            print(f"V={v}: K=1 -> K=10 costs {by_k[10] / by_k[1]:.2f}x")
    print(f"peak RSS {peak_rss_mib():.0f} MiB (JAX and PyTorch models in one process)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
