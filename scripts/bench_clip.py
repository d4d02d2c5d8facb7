"""CLIP image-tower speed and loading memory: jaxseg (Flax) vs transformers (PyTorch).

ViT-B/16 with random weights, 224 px. Reports forward seconds at batch 1 and 8
(median of --repeats after a warm-up), jaxseg's compile time, the peak RSS of a
fresh process that only imports jaxseg and loads the checkpoint, and start-up
times of fresh interpreters (best of 5): the CLI's --help, importing the CLIP
handle, and building the tiny test tokenizer from each kind of tokenizer folder.

  python scripts/bench_clip.py [--repeats 5] [--load-only]
"""

from __future__ import annotations

import argparse
import os
import shutil
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
from checkpoints import TINY_TOKENIZER, VIT_B16_VISION, VIT_B_TEXT, make_checkpoint  # noqa: E402

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
TOKENIZER_PROBE = ("import sys; from jaxseg.clip.tokenizer import Tokenizer; "
                   "Tokenizer.from_folder(sys.argv[1])(['a photo of a cat.'])")


def startup_seconds(folder: str) -> dict[str, float]:
    """Best-of-5 wall seconds of fresh interpreters doing one start-up step each."""
    vocab_merges = os.path.join(folder, "vocab-merges")
    os.makedirs(vocab_merges)
    for name in ("vocab.json", "merges.txt"):
        shutil.copyfile(os.path.join(TINY_TOKENIZER, name), os.path.join(vocab_merges, name))
    commands = {
        "python -m jaxseg.segment --help": ["-m", "jaxseg.segment", "--help"],
        "import jaxseg.clip.handle": ["-c", "import jaxseg.clip.handle"],
        "tokenizer from tokenizer.json": ["-c", TOKENIZER_PROBE, TINY_TOKENIZER],
        "tokenizer from vocab.json + merges.txt": ["-c", TOKENIZER_PROBE, vocab_merges],
    }
    best = {}
    for label, arguments in commands.items():
        times = []
        for _ in range(5):
            start = time.perf_counter()
            subprocess.run([sys.executable, *arguments], check=True, capture_output=True)
            times.append(time.perf_counter() - start)
        best[label] = min(times)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--load-only", action="store_true",
                        help="only loading memory and start-up times, no forward passes")
    args = parser.parse_args()
    folder = tempfile.mkdtemp(prefix="vit-b16-")
    try:
        model = make_checkpoint(folder, vision=VIT_B16_VISION, text=VIT_B_TEXT,
                                projection_dim=512, hub_buffers=False)
        size_mib = os.path.getsize(os.path.join(folder, "model.safetensors")) / 2 ** 20
        probe = subprocess.run([sys.executable, "-c", LOAD_PROBE, folder], capture_output=True,
                               text=True, check=True)
        rss_before, rss_after = map(float, probe.stdout.split())
        if not args.load_only:
            speed_table(jaxseg.load_clip(folder), model, args.repeats)
        startup = startup_seconds(folder)
    finally:
        shutil.rmtree(folder)
    print(f"\nloading: checkpoint {size_mib:.0f} MiB; peak RSS {rss_before:.0f} MiB after "
          f"imports, {rss_after:.0f} MiB after load_clip (+{rss_after - rss_before:.0f} MiB, "
          f"{rss_after / size_mib:.2f}x the checkpoint in total)")
    print("\n| start-up (fresh interpreter, best of 5) | s |\n|---|---|")
    for label, seconds in startup.items():
        print(f"| {label} | {seconds:.2f} |")


def speed_table(clip: jaxseg.CLIP, model: torch.nn.Module, repeats: int) -> None:
    """Prints forward seconds of jaxseg and PyTorch at batch 1 and 8."""
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
        ours = median_seconds(lambda: jax.block_until_ready(clip.encode_image(pixels)), repeats)
        with torch.inference_mode():
            theirs = median_seconds(lambda: model.get_image_features(pixel_values=nchw), repeats)
        print(f"| {batch} | {ours:.3f} | {theirs:.3f} | {theirs / ours:.2f}x | {compile_s:.1f} |")


if __name__ == "__main__":
    main()
