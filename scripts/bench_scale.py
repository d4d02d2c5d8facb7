"""Dataset throughput vs (virtual) devices, refinement workers and device/host overlap.

Segments the first N coco-dev images with VOC labels (images without any are
skipped) at the real TTA and refinement defaults, with a random mid-size CLIP
(ViT with 192-wide, 6-block vision tower, 16 px patches, 224 px input; no
download) because ViT-B/16 is too slow on a small CPU for many configurations.
Each device count runs in a fresh subprocess with
``XLA_FLAGS=--xla_force_host_platform_device_count=D`` and a ``data_mesh`` over
them. In each, for every worker count:

  overlap off   per batch: device stage (relevance), then refine its images in the
                pool and wait; the device idles while the host refines
  overlap on    a thread runs the device stage into a bounded queue while the
                pool refines earlier images (RefinePool.imap)

Programs are compiled and the workers warmed up before timing. Mask digests of
every run are compared: all must be identical. Prints a markdown table.

  python scripts/bench_scale.py [--images 16] [--devices 1 2 4] [--workers 1 2]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COCO_DEV = os.path.join(ROOT, "..", "shared", "data", "coco-dev")
MID_VISION = dict(hidden_size=192, intermediate_size=768, num_attention_heads=3,
                  num_hidden_layers=6, image_size=224, patch_size=16)
MID_TEXT = dict(hidden_size=128, intermediate_size=512, num_attention_heads=2,
                num_hidden_layers=2, max_position_embeddings=77)
BATCH = 4  # images per device call (rounded up to a multiple of the devices)


def coco_dev_items(count: int) -> list[tuple[str, str, list[str]]]:
    """The first ``count`` coco-dev images that have VOC labels: ``(stem, path, labels)``."""
    labels = json.load(open(os.path.join(COCO_DEV, "labels_voc20.json")))
    stems = [stem for stem in sorted(labels) if labels[stem]][:count]
    return [(stem, os.path.join(COCO_DEV, "images", f"{stem}.jpg"), labels[stem])
            for stem in stems]


def batches_by_bucket(items, batch_size: int):
    """Items grouped by padded label count (one program each), cut into batches."""
    from jaxseg.maps.batch import class_bucket
    groups: dict[int, list] = {}
    for item in items:
        groups.setdefault(class_bucket(len(item[2])), []).append(item)
    return [group[i:i + batch_size] for _, group in sorted(groups.items())
            for i in range(0, len(group), batch_size)]


def device_stage(segmenter, batch, batch_size: int):
    """Relevance of one batch of ``(stem, image, labels)``: ``[(image, DeviceOutput)]``."""
    images = [image for _, image, _ in batch]
    results = segmenter.relevance_stage(images, [labels for _, _, labels in batch], batch_size)
    return list(zip(images, results))


def run_sequential(segmenter, batches, batch_size, pool) -> list:
    from jaxseg.segmenter import refine_mask
    masks = []
    for batch in batches:
        jobs = [(i, (*entry, segmenter.config))
                for i, entry in enumerate(device_stage(segmenter, batch, batch_size))]
        masks += [future.result()[0] for _, future in pool.imap(refine_mask, jobs)]
    return masks


def run_overlapped(segmenter, batches, batch_size, pool) -> list:
    from jaxseg.segmenter import refine_mask
    handoff: queue.Queue = queue.Queue(maxsize=2 * batch_size)  # bounded: memory stays flat
    done = object()

    def produce() -> None:
        for batch in batches:
            for entry in device_stage(segmenter, batch, batch_size):
                handoff.put(entry)
        handoff.put(done)

    def jobs():
        index = 0
        while (entry := handoff.get()) is not done:
            yield index, (*entry, segmenter.config)
            index += 1

    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    masks = [future.result()[0] for _, future in pool.imap(refine_mask, jobs())]
    producer.join()
    return masks


def child(folder: str, count: int, workers_list: list[int]) -> None:
    """One device count (set by the parent's XLA_FLAGS): prints one JSON line per run."""
    import jax
    import numpy as np
    from jaxseg.clip.handle import load_clip
    from jaxseg.maps.batch import class_bucket
    from jaxseg.run.imageio import read_image
    from jaxseg.run.sharding import RefinePool, data_mesh, device_batch_size
    from jaxseg.segmenter import Segmenter, refine_mask

    clip = load_clip(folder)
    mesh = data_mesh()
    segmenter = Segmenter(clip, mesh=mesh if mesh.size > 1 else None)
    batch_size = device_batch_size(BATCH, mesh)
    items = [(stem, read_image(path), labels) for stem, path, labels in coco_dev_items(count)]
    batches = batches_by_bucket(items, batch_size)
    start = time.perf_counter()
    one_per_bucket = {class_bucket(len(batch[0][2])): batch for batch in batches}
    warm = [device_stage(segmenter, batch, batch_size)
            for batch in one_per_bucket.values()]  # compiles each bucket's program
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    for batch in batches:
        device_stage(segmenter, batch, batch_size)
    device_s = time.perf_counter() - start
    for workers in workers_list:
        with RefinePool(workers) as pool:
            warm_jobs = [(i, (*warm[0][0], segmenter.config))
                         for i in range(2 * max(1, workers))]
            start = time.perf_counter()
            list(pool.imap(refine_mask, warm_jobs))  # starts and compiles every worker
            pool_start_s = time.perf_counter() - start
            for overlap, run in (("off", run_sequential), ("on", run_overlapped)):
                start = time.perf_counter()
                masks = run(segmenter, batches, batch_size, pool)
                wall = time.perf_counter() - start
                digest = hashlib.sha1(b"".join(m.astype("int32").tobytes() for m in masks))
                if (workers, overlap) == (workers_list[0], "off"):
                    np.savez(os.path.join(os.path.dirname(folder), f"masks_{mesh.size}.npz"),
                             *masks)
                print(json.dumps({
                    "devices": mesh.size, "workers": workers, "overlap": overlap,
                    "images": len(masks), "seconds": wall, "images_per_s": len(masks) / wall,
                    "device_stage_s": device_s, "compile_s": compile_s,
                    "pool_start_s": pool_start_s, "digest": digest.hexdigest(),
                    "load_1min": os.getloadavg()[0],
                    "platform": jax.devices()[0].platform}), flush=True)


def table(rows: list[dict]) -> str:
    lines = ["| devices | refine workers | overlap | images/s | wall s | device stage alone s "
             "| warm-up (compile) s | load avg |", "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['devices']} | {row['workers']} | {row['overlap']} | "
                     f"{row['images_per_s']:.2f} | {row['seconds']:.1f} | "
                     f"{row['device_stage_s']:.1f} | {row['compile_s']:.1f} | "
                     f"{row['load_1min']:.1f} |")
    return "\n".join(lines)


def mask_agreement(rows: list[dict], folder: str) -> str:
    """Are masks bit-identical across workers/overlap (they must be), and across devices?"""
    import numpy as np
    lines = []
    by_devices: dict[int, set] = {}
    for row in rows:
        by_devices.setdefault(row["devices"], set()).add(row["digest"])
    same = all(len(digests) == 1 for digests in by_devices.values())
    lines.append(f"masks identical across refine workers and overlap, per device count: "
                 f"{'yes' if same else 'NO'}")
    counts = sorted(by_devices)
    reference = np.load(os.path.join(folder, f"masks_{counts[0]}.npz"))
    for devices in counts[1:]:
        other = np.load(os.path.join(folder, f"masks_{devices}.npz"))
        differ = sum(int((reference[k] != other[k]).sum()) for k in reference.files)
        total = sum(reference[k].size for k in reference.files)
        images = sum(bool((reference[k] != other[k]).any()) for k in reference.files)
        lines.append(f"{devices} vs {counts[0]} device(s): {differ} of {total} mask pixels differ "
                     f"({images} of {len(reference.files)} images)")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--devices", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--json", help="also write the rows as JSON here")
    parser.add_argument("--child", metavar="CHECKPOINT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.images, args.workers)
        return

    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from checkpoints import make_checkpoint
    folder = os.path.join(tempfile.mkdtemp(prefix="bench-scale-"), "clip")
    make_checkpoint(folder, vision=MID_VISION, text=MID_TEXT, projection_dim=128)
    rows, loads = [], [os.getloadavg()[0]]
    for devices in args.devices:
        env = dict(os.environ, HF_HUB_OFFLINE="1", JAX_PLATFORMS="cpu",
                   XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
        command = [sys.executable, os.path.abspath(__file__), "--child", folder,
                   "--images", str(args.images), "--workers", *map(str, args.workers)]
        out = subprocess.run(command, env=env, capture_output=True, text=True)
        if out.returncode:
            sys.exit(f"{devices} devices failed:\n{out.stderr[-3000:]}")
        rows += [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
        loads.append(os.getloadavg()[0])
        print(f"{devices} device(s) done, load average {loads[-1]:.1f}", file=sys.stderr,
              flush=True)
    print(f"{rows[0]['images']} coco-dev images, random CLIP (vision {MID_VISION}), "
          f"TTA and refinement defaults, batch {BATCH} per device call; {os.cpu_count()} "
          f"CPU cores, 1-minute load average {min(loads):.1f} .. {max(loads):.1f}\n")
    print(table(rows))
    print("\n" + mask_agreement(rows, os.path.dirname(folder)))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=1)


if __name__ == "__main__":
    main()
