"""Relevance speed: jaxseg vs PyTorch implementations, ViT-B/16 with random weights.

--method chefer (default): for V images (TTA variants) of 224 px and K classes, per call:
  jaxseg      jaxseg.relevance (one jitted program; one forward, vmapped pullbacks)
  forward     jaxseg's pure image forward of the same V images (the floor)
  notebook    PyTorch shaped like the reference notebook: one forward + backward per pair
  careful     PyTorch: one forward per batch, one backward per class
--method clip-es | naclip: one image of --size H W (default 384 512 / 336 448) and K classes:
  jaxseg      jaxseg.relevance with the method (CLIP-ES: K present + 25 background names)
  forward     jaxseg's pure image forward at that size
  authors     clip-es only: the authors' loop shape in PyTorch float32 (tests/torch_clip_es:
              one no-grad pass, then per class one last-block forward + backward and a CAA)
Also compile time and peak RSS. Prints a markdown table (and JSON with --json).

  python scripts/bench_relevance.py [--repeats 3] [--skip-notebook]
  python scripts/bench_relevance.py --method clip-es --classes 3 20
  python scripts/bench_relevance.py --method naclip --classes 1 171
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
from torch_clip_es import clip_es_maps as clip_es_reference  # noqa: E402


def method_rows(args, clip, model) -> list[dict]:
    """CLIP-ES / NACLIP rows: one image of ``args.size`` against the forward at that size."""
    height, width = args.size or ((384, 512) if args.method == "clip-es" else (336, 448))
    rng = np.random.RandomState(0)
    pixels = rng.randn(1, height, width, 3).astype(np.float32)
    forward_s = median_seconds(lambda: jax.block_until_ready(clip.encode_image(pixels)),
                               args.repeats)
    config = jaxseg.RelevanceConfig(method=args.method)
    background = rng.randn(25, 512).astype(np.float32) if args.method == "clip-es" else None
    rows = []
    for classes in args.classes:
        texts = rng.randn(classes, 512).astype(np.float32)

        def ours():
            return jax.block_until_ready(jaxseg.relevance(clip, pixels, texts, config=config,
                                                          background_embeds=background))

        start = time.perf_counter()
        ours()
        compile_s = time.perf_counter() - start
        row = dict(method=args.method, size=f"{height}x{width}", K=classes,
                   jaxseg_s=median_seconds(ours, args.repeats), forward_s=forward_s,
                   compile_s=compile_s, authors_s=float("nan"))
        if args.method == "clip-es":
            row["authors_s"] = median_seconds(lambda: clip_es_reference(
                model, pixels, texts, background, dtype=torch.float32), 1)
        rows.append(row)
        print(json.dumps(row), flush=True)
    print("\n| method | size | K | jaxseg s | forward s | jaxseg/forward | authors' loop s "
          "| authors/jaxseg | compile s |\n|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['size']} | {r['K']} | {r['jaxseg_s']:.3f} | "
              f"{r['forward_s']:.3f} | {r['jaxseg_s'] / r['forward_s']:.2f}x | "
              f"{r['authors_s']:.3f} | {r['authors_s'] / r['jaxseg_s']:.2f}x | "
              f"{r['compile_s']:.1f} |")
    if len(rows) > 1:
        print(f"K = {rows[0]['K']} -> {rows[-1]['K']} costs "
              f"{rows[-1]['jaxseg_s'] / rows[0]['jaxseg_s']:.2f}x")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="chefer", choices=["chefer", "clip-es", "naclip"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--variants", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--classes", type=int, nargs="+")
    parser.add_argument("--size", type=int, nargs=2, metavar=("H", "W"))
    parser.add_argument("--start-layer", type=int, default=-1)
    parser.add_argument("--skip-notebook", action="store_true")
    parser.add_argument("--json", help="also write the rows as JSON here")
    args = parser.parse_args()
    args.classes = args.classes or {"chefer": [1, 5, 10], "clip-es": [3, 20],
                                    "naclip": [1, 171]}[args.method]

    folder = tempfile.mkdtemp(prefix="vit-b16-")
    model = make_checkpoint(folder, vision=VIT_B16_VISION, text=VIT_B_TEXT, projection_dim=512)
    clip = jaxseg.load_clip(folder)
    if args.method != "chefer":
        print(f"jax {jax.__version__} on {jax.devices()[0].platform}, torch {torch.__version__} "
              f"({torch.get_num_threads()} threads)", flush=True)
        rows = method_rows(args, clip, model)
        print(f"peak RSS {peak_rss_mib():.0f} MiB (JAX and PyTorch models in one process)")
        if args.json:
            with open(args.json, "w") as f:
                json.dump(rows, f, indent=1)
        return
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
