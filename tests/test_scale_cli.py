"""``python -m jaxseg.segment --dataset folder`` sharded over 4 virtual devices and over two
jax.distributed processes writes exactly the masks of a plain single-device run."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
from PIL import Image
from test_sharding import free_port

FAST = ["--input-size", "32", "--canvas-size", "64", "--refine-steps", "10", "--batch-size", "4",
        "--no-compile-cache", "--quiet"]
TIMEOUT_S = 300


def make_folder_dataset(root, count=6):
    rng = np.random.default_rng(1)
    (root / "images").mkdir(parents=True)
    labels = {}
    for index in range(count):
        stem = f"im{index:02d}"
        Image.fromarray(rng.integers(0, 256, (24 + 3 * index, 36, 3), dtype=np.uint8)).save(
            root / "images" / f"{stem}.png")
        labels[stem] = ["cat", "dog", "sofa"][: 1 + index % 3]
    (root / "labels.json").write_text(json.dumps(labels))
    return sorted(labels)


def start(args, extra_env=None):
    env = dict(os.environ, HF_HUB_OFFLINE="1", JAX_PLATFORMS="cpu", **(extra_env or {}))
    return subprocess.Popen([sys.executable, "-m", "jaxseg.segment", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait(process):
    try:
        output, _ = process.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        raise AssertionError(f"segment run hung: {process.args}")
    assert process.returncode == 0, output
    return output


def masks(out, stems):
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"{s}.png" for s in stems] + [f"{s}.json" for s in stems])  # no strays, each once
    return {stem: np.asarray(Image.open(out / f"{stem}.png")) for stem in stems}


def test_sharded_and_multi_process_runs_equal_the_plain_run(tiny_checkpoint, tmp_path):
    stems = make_folder_dataset(tmp_path / "data")
    common = ["--dataset", "folder", "--root", str(tmp_path / "data"), "--model",
              tiny_checkpoint[0], *FAST]
    plain = start([*common, "--out", str(tmp_path / "plain"), "--refine-workers", "0"])
    four = start([*common, "--out", str(tmp_path / "four"), "--refine-workers", "2"],
                 {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"})
    wait(plain)
    wait(four)
    port = free_port()
    pair = [start([*common, "--out", str(tmp_path / "pair"), "--coordinator-address",
                   f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(index)])
            for index in range(2)]
    for process in pair:
        wait(process)
    expected = masks(tmp_path / "plain", stems)
    assert any(len(np.unique(mask)) > 1 for mask in expected.values())
    for run in ("four", "pair"):
        got = masks(tmp_path / run, stems)
        for stem in stems:
            np.testing.assert_array_equal(got[stem], expected[stem], err_msg=f"{run}/{stem}")
