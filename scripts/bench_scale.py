"""Dataset throughput: host core-seconds and device seconds per image, and a projection.

Per image, on coco-dev photos resized to 500 x 375 with K = 3 VOC labels (each image's
own VOC labels, topped up with other VOC classes), a random ViT-B/16 (no download) and
the default configuration:

  decode   imageio.read_image of the JPEG (host)
  device   Segmenter.relevance_stage in batches of --batch-size: relevance and the graph
           cut's unaries (smoothing, seeds, distillation: jaxseg.refinement.unaries); this
           CPU stands in for the accelerator (its FLOPs give the accelerator estimate)
  refine   the host stage (segmenter.refine_mask): the graph cut at refinement size and
           the labels' upsampling
  write    run.outputs.write_outputs (mask PNG + JSON sidecar)

Host figures are core-seconds (``time.process_time``: every thread's CPU time). The
projection is images/s = min(worker cores / host core-seconds, devices / device seconds)
for hosts of 16 and 224 cores (two kept for feeding and writing) and 1 and 8 devices, with
the accelerator's time per image estimated as the program's FLOPs (XLA cost analysis) at
``--device-tflops`` sustained (default 200: an H100/H200-class GPU in bfloat16 at about
a quarter of its peak). Then VOC trainaug (10,582 images) wall times.

  python scripts/bench_scale.py [--images 8] [--batch-size 8] [--device-tflops 200]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(__file__))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

import benchlib  # noqa: E402, F401 - puts tests/ on the path
from checkpoints import VIT_B_TEXT, VIT_B16_VISION, make_checkpoint  # noqa: E402
from jaxseg.clip.handle import load_clip  # noqa: E402
from jaxseg.labels.vocab import VOC_CLASSES  # noqa: E402
from jaxseg.maps import batch as batch_lib  # noqa: E402
from jaxseg.refinement.features import LOCAL_DIMS  # noqa: E402
from jaxseg.refinement.unaries import batch_unaries_program  # noqa: E402
from jaxseg.run import imageio  # noqa: E402
from jaxseg.run.datasets import Item  # noqa: E402
from jaxseg.run.outputs import write_outputs  # noqa: E402
from jaxseg.segmenter import Segmenter, refine_mask  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COCO_DEV = os.path.join(ROOT, "..", "shared", "data", "coco-dev")
TRAINAUG = 10582


def photos(count: int, folder: str) -> list[tuple[str, list[str]]]:
    """``(path, 3 labels)`` of the first coco-dev images with VOC labels, as 500x375 JPEGs."""
    labels = json.load(open(os.path.join(COCO_DEV, "labels_voc20.json")))
    chosen = []
    for stem in sorted(labels):
        if labels[stem] and len(chosen) < count:
            image = Image.open(os.path.join(COCO_DEV, "images", f"{stem}.jpg")).convert("RGB")
            path = os.path.join(folder, f"{stem}.jpg")
            image.resize((500, 375), Image.BICUBIC).save(path, quality=90)
            names = labels[stem][:3]
            names += [name for name in VOC_CLASSES if name not in names][:3 - len(names)]
            chosen.append((path, names))
    return chosen


def core_seconds(function, *args):
    start = time.process_time()
    result = function(*args)
    return result, time.process_time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device-tflops", type=float, default=200.0)
    parser.add_argument("--json", help="also write the figures as JSON here")
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="bench-scale-")
    make_checkpoint(os.path.join(work, "clip"), vision=VIT_B16_VISION, text=VIT_B_TEXT,
                    projection_dim=512)
    segmenter = Segmenter(load_clip(os.path.join(work, "clip")))
    data = photos(args.images, work)
    decoded = [core_seconds(imageio.read_image, path) for path, _ in data]
    images = [image for image, _ in decoded]
    labels = [names for _, names in data]
    size = min(args.batch_size, len(images))
    segmenter.relevance_stage(images[:size], labels[:size], size)  # compile
    start = time.perf_counter()
    outputs = segmenter.relevance_stage(images, labels, size)
    device_s = (time.perf_counter() - start) / len(images)
    refined = [core_seconds(refine_mask, image, output, segmenter.config)
               for image, output in zip(images, outputs)]
    writes = [core_seconds(write_outputs, work, Item(f"out{i}", path, names), image, mask,
                           names, None, (), {"model": "bench"}, {})[1]
              for i, ((path, names), image, ((mask, _), _)) in enumerate(zip(data, images, refined))]
    # The accelerator: FLOPs of one batch of the default program, per image.
    (canvases, content_hw), _ = batch_lib.pack_tta(images[:size], segmenter.config.tta, size)
    queries, owners = zip(*(segmenter._queries(names) for names in labels[:size]))
    packed, owner = batch_lib.pack_queries(queries, owners, size,
                                           batch_lib.class_bucket(max(map(len, queries))))
    program = segmenter.clip.compiled(
        batch_lib.tta_program, tta=segmenter.config.tta, relevance=segmenter.config.relevance,
        scoring=segmenter.config.scoring, num_labels=batch_lib.class_bucket(3))
    lowered = program.lower(segmenter.clip.params, canvases, content_hw, packed, owner,
                            segmenter._background)
    maps, _, features = jax.eval_shape(program, segmenter.clip.params, canvases, content_hw,
                                       packed, owner, segmenter._background)
    side = segmenter.config.refine.long_side

    def spec(shape, dtype):
        return jax.ShapeDtypeStruct(shape, dtype)
    unaries_lowered = batch_unaries_program.lower(
        maps, spec((size, 2), np.int32), spec((size, side, side, 3), np.uint8),
        spec((size, 2), np.int32), spec((size, maps.shape[1]), bool), features,
        spec((size, 2), np.int32), config=segmenter.config.refine)
    flops = sum(float((cost[0] if isinstance(cost, list) else cost)["flops"])
                for cost in (lowered.compile().cost_analysis(),
                             unaries_lowered.compile().cost_analysis())) / size
    # XLA counts a loop body once: add the classifier's other training steps (forward and
    # backward ~ 6 FLOPs per weight and row).
    classifier = segmenter.config.refine.classifier
    weights = ((2 * classifier.num_fourier + LOCAL_DIMS + segmenter.config.refine.feature_dims)
               * classifier.hidden_size + classifier.hidden_size * classifier.class_bucket)
    flops += 6 * weights * classifier.batch_size * (classifier.steps - 1)
    accelerator_s = flops / (args.device_tflops * 1e12)

    figures = {
        "decode": statistics.mean(seconds for _, seconds in decoded),
        "refine": statistics.mean(seconds for _, seconds in refined),
        "write": statistics.mean(writes),
        "device_cpu_s": device_s, "device_gflop": flops / 1e9, "accelerator_s": accelerator_s}
    host = figures["decode"] + figures["refine"] + figures["write"]
    print(f"{len(images)} coco-dev photos at 500x375, K = 3, batch {size}, "
          f"jax {jax.__version__} on {jax.devices()[0].platform}, {os.cpu_count()} cores\n")
    print("| per image | seconds |\n|---|---:|")
    for name, value in (("decode (host core-s)", figures["decode"]),
                        ("refine: graph cut + upsampling (host core-s)", figures["refine"]),
                        ("write (host core-s)", figures["write"]),
                        ("host total: decode + refine + write", host),
                        ("device stage on this CPU", device_s),
                        (f"device stage, {flops / 1e9:.0f} GFLOP at {args.device_tflops:.0f} "
                         "TFLOP/s", accelerator_s)):
        print(f"| {name} | {value:.3f} |")
    print("\n| host cores | devices | host work | images/s | VOC trainaug |\n|---|---|---|---|---|")
    rows = []
    for cores in (16, 224):
        for devices in (1, 8):
            rate = min((cores - 2) / host, devices / accelerator_s)
            rows.append(dict(cores=cores, devices=devices, rate=rate))
            print(f"| {cores} | {devices} | {host:.2f} core-s | {rate:.0f} | "
                  f"{TRAINAUG / rate / 60:.1f} min |")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"figures": figures, "projection": rows}, handle, indent=1)


if __name__ == "__main__":
    main()
