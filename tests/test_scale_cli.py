"""``python -m jaxseg.segment`` on real photos (coco-dev) writes byte-identical masks on 1, 2
and 8 devices and with two jax.distributed processes; a failing process hangs nobody
(4 devices are covered in-process by test_sharding)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from test_sharding import free_port
from compile_cache import CACHE_ARGS

COCO_DEV = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "coco-dev")
FAST = ["--input-size", "32", "--canvas-size", "64", "--refine-steps", "10", "--batch-size", "2",
        *CACHE_ARGS, "--quiet"]
TIMEOUT_S = 400


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """A folder dataset of 7 coco-dev photos with their VOC labels (3 label buckets, one
    image with no label, an odd count: partial batches)."""
    if not os.path.isdir(COCO_DEV):
        pytest.skip("coco-dev is not next to the repository")
    labels = json.load(open(os.path.join(COCO_DEV, "labels_voc20.json")))
    chosen = sorted(labels)[:7]
    root = tmp_path_factory.mktemp("photos")
    (root / "images").mkdir()
    for stem in chosen:
        os.symlink(os.path.abspath(os.path.join(COCO_DEV, "images", f"{stem}.jpg")),
                   root / "images" / f"{stem}.jpg")
    (root / "labels.json").write_text(json.dumps({stem: labels[stem] for stem in chosen}))
    return root, chosen


def start(args, extra_env=None):
    env = dict(os.environ, HF_HUB_OFFLINE="1", JAX_PLATFORMS="cpu", **(extra_env or {}))
    return subprocess.Popen([sys.executable, "-m", "jaxseg.segment", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait(process, status=0):
    try:
        output, _ = process.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        raise AssertionError(f"segment run hung: {process.args}")
    assert process.returncode == status, output
    return output


def outputs(out, stems):
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"{s}.png" for s in stems] + [f"{s}.json" for s in stems])  # no strays, each once
    return {stem: ((out / f"{stem}.png").read_bytes(),
                   json.loads((out / f"{stem}.json").read_text())["labels"]) for stem in stems}


def test_masks_are_byte_identical_on_any_device_and_process_count(tiny_checkpoint, photos,
                                                                   tmp_path):
    root, stems = photos
    common = ["--dataset", "folder", "--root", str(root), "--model", tiny_checkpoint[0], *FAST]

    def run_on(devices):
        return start([*common, "--out", str(tmp_path / f"d{devices}"),
                      "--refine-workers", "0" if devices == 1 else "2"],
                     {"XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"})
    # One device first: it fills the session's compilation cache that the others read.
    wait(run_on(1))
    for process in [run_on(devices) for devices in (2, 8)]:
        wait(process)
    port = free_port()
    pair = [start([*common, "--out", str(tmp_path / "pair"), "--coordinator-address",
                   f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(index)])
            for index in range(2)]
    for process in pair:
        wait(process)
    expected = outputs(tmp_path / "d1", stems)
    assert len({mask for mask, _ in expected.values()}) > 1
    for run in ("d2", "d8", "pair"):
        assert outputs(tmp_path / run, stems) == expected, run


def test_a_failing_process_does_not_hang_the_others(tiny_checkpoint, photos, tmp_path):
    root, stems = photos
    port = free_port()
    common = ["--dataset", "folder", "--root", str(root), *FAST, "--out", str(tmp_path / "out"),
              "--coordinator-address", f"127.0.0.1:{port}", "--num-processes", "2"]
    healthy = start([*common, "--process-id", "0", "--model", tiny_checkpoint[0]])
    failing = start([*common, "--process-id", "1", "--model", str(tmp_path / "no-such-model")])
    assert "no-such-model" in wait(failing, status=2)
    wait(healthy)  # its own share written, then past the final barrier
    assert any(name.endswith(".json") for name in os.listdir(tmp_path / "out"))
