"""CLIP image-tower speed and loading memory: jaxseg (Flax) vs transformers (PyTorch).

ViT-B/16 with random weights, 224 px. Reports forward seconds at batch 1 and 8
(median of --repeats after a warm-up), jaxseg's compile time, and the peak RSS of
a fresh process that only imports jaxseg and loads the checkpoint.

  python scripts/bench_clip.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(__file__))

import jax  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import jaxseg  # noqa: E402
from benchlib import median_seconds  # noqa: E402
from checkpoints import VIT_B16_VISION, VIT_B_TEXT, make_checkpoint  # noqa: E402

# Run in a child process so the parent's PyTorch model does not count. VmHWM (this
# process's peak RSS) rather than ru_maxrss, which keeps the forking parent's peak.
LOAD_PROBE = """
import sys, jax, jaxseg
def peak_mib():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
import jaxseg.clip.handle  # noqa: F401 - its imports count before loading
before = peak_mib()
clip = jaxseg.load_clip(sys.argv[1])
jax.block_until_ready(clip.params)
print(before, peak_mib())
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    folder = tempfile.mkdtemp(prefix="vit-b16-")
    model = make_checkpoint(folder, vision=VIT_B16_VISION, text=VIT_B_TEXT, projection_dim=512,
                            hub_buffers=False)
    size_mib = os.path.getsize(os.path.join(folder, "model.safetensors")) / 2 ** 20
    probe = subprocess.run([sys.executable, "-c", LOAD_PROBE, folder], capture_output=True,
                           text=True, check=True)
    rss_before, rss_after = map(float, probe.stdout.split())
    clip = jaxseg.load_clip(folder)
    print(f"jax {jax.__version__} ({jax.devices()[0].platform}), torch {torch.__version__} "
          f"({torch.get_num_threads()} threads)")
    print("| batch | jaxseg s | PyTorch s | PyTorch/jaxseg | jaxseg compile s |")
    print("|---|---|---|---|---|")
    for batch in (1, 8):
        pixels = np.random.RandomState(batch).randn(batch, 224, 224, 3).astype(np.float32)
        nchw = torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous()
        start = time.perf_counter()
        jax.block_until_ready(clip.encode_image(pixels))
        compile_s = time.perf_counter() - start
        ours = median_seconds(lambda: jax.block_until_ready(clip.encode_image(pixels)),
                              args.repeats)
        with torch.inference_mode():
            theirs = median_seconds(lambda: model.get_image_features(pixel_values=nchw),
                                    args.repeats)
        print(f"| {batch} | {ours:.3f} | {theirs:.3f} | {theirs / ours:.2f}x | {compile_s:.1f} |")
    print(f"\nloading: checkpoint {size_mib:.0f} MiB; peak RSS {rss_before:.0f} MiB after "
          f"imports, {rss_after:.0f} MiB after load_clip (+{rss_after - rss_before:.0f} MiB, "
          f"{rss_after / size_mib:.2f}x the checkpoint in total)")


if __name__ == "__main__":
    main()
