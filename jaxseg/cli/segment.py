"""Command line: segment images or a dataset given image-level labels.

Usage::

    python -m jaxseg.segment IMG [IMG ...] --labels cat,sofa [--model ID_OR_DIR] [--out DIR]
    python -m jaxseg.segment IMG ... --labels-file labels.json       # {"<stem>": ["cat", ...]}
    python -m jaxseg.segment IMG ... --labels auto --vocab voc|coco|FILE
    python -m jaxseg.segment IMG ... --labels all --vocab voc     # every class of the vocabulary
    python -m jaxseg.segment IMG ... --labels cat --method clip-es|naclip|chefer+naclip
    python -m jaxseg.segment IMG ... --labels cat --preset clip-es|clip-es-coco|naclip
    python -m jaxseg.segment --dataset voc --root VOCdevkit/VOC2012 --split val --out DIR
    python -m jaxseg.segment --dataset folder --root DIR [--labels-file F] --out DIR

Per image ``<stem>`` it writes, in ``--out``:

- ``<stem>.png``: palette PNG of the image's size, pixel = label index (0 background,
  ``i`` the i-th label), VOC colours;
- ``<stem>.json``: ``labels``, ``fractions`` (pixel fraction per label), ``timings``
  (seconds per stage), ``image_size`` ``[H, W]``, ``image``, ``model``, and for
  ``--labels auto`` the chosen labels' ``label_scores``;
- with ``--overlay``, ``<stem>_overlay.png``: the image blended with the mask and
  a legend of label names;
- with ``--heatmaps``, ``<stem>_maps.png``: each label's score map as a heat overlay, one
  titled panel per label.

Methods: ``--method chefer`` (default; TTA views, jaxseg's refinement), ``clip-es`` and
``naclip`` (each on its authors' single native-resolution view, prompts, background names
and scoring), or an ensemble such as ``chefer+naclip``. ``--view tta|native`` overrides the
view, ``--refine graphcut|crf|none`` the last stage (``crf`` is CLIP-ES's dense CRF and
needs ``pip install 'jaxseg[crf]'``). ``--preset`` reproduces an author's pseudo-labels end
to end: ``clip-es`` (VOC; with their CRF), ``clip-es-coco``, ``naclip`` (VOC21: PAMR, no
further refinement).

Refinement levels: a graph-cut run of 50 images or more first calibrates the levels at
which every image's maps are read on up to 100 of its images (``levels.json``; see
``jaxseg.run.calibration``); ``--calibrate-levels 0`` reads each image at its own.

Images: any format PIL reads, shown as a viewer shows them (EXIF orientation applied; grey,
palette, CMYK and 16-bit converted to RGB, 16-bit values scaled by 65535; transparency over
white), from 1 px up to 8192 x 8192 px.

Labels: commas separate names; surrounding spaces are stripped, empty names and repeats
(same name up to case, spacing and VOC/COCO spelling: ``sofa`` after ``couch``) are
dropped with a warning; an image left with no label is all background. A label whose
prompt would not fit CLIP's 77-token context is cut to its longest fitting word prefix
(with a warning).

Runs are resumable: every file is written under a temporary name and renamed, the JSON last,
and an image whose outputs all exist is skipped (``--overwrite`` redoes it). Unreadable
inputs are reported one line each and in a summary; the run goes on. Exit status: 0 all
written, 1 some inputs failed, 2 usage or configuration error (bad --model, labels file or
dataset layout), 130 after Ctrl-C, 143 after SIGTERM (finished images kept, no partial file,
the summary line printed).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import sys
import traceback
from typing import Optional, Sequence

from jaxseg.cli.console import Console, configure_compile_cache, default_cache_dir, warnings_to
from jaxseg.cli.signals import Terminated, stop_on_signals

DEFAULT_MODEL = "openai/clip-vit-base-patch16"
# Known without importing jaxseg.config (which imports JAX): --help stays fast.
VIEWS = ("tta", "native")
REFINE_MODES = ("graphcut", "crf", "none")
PRESET_NAMES = ("clip-es", "clip-es-coco", "naclip")
PROG = "python -m jaxseg.segment"


class UsageError(ValueError):
    """Inconsistent command-line arguments (exit status 2)."""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (its help is the command's documentation)."""
    parser = argparse.ArgumentParser(
        prog=PROG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description=__doc__)
    parser.add_argument("images", nargs="*", metavar="IMG", help="image files to segment")
    labels = parser.add_argument_group("labels")
    labels.add_argument("--labels", metavar="A,B|auto|all",
                        help="comma-separated class names for every image, 'auto' to pick "
                             "them from --vocab, or 'all': every class of --vocab")
    labels.add_argument("--labels-file", metavar="FILE",
                        help='JSON {"<image stem>": ["label", ...]} (folder datasets default to '
                             "ROOT/labels.json)")
    labels.add_argument("--vocab", default="voc", metavar="voc|coco|FILE",
                        help="vocabulary of --labels auto|all (default voc)")
    data = parser.add_argument_group("datasets")
    data.add_argument("--dataset", choices=("voc", "folder"), help="run over a dataset layout")
    data.add_argument("--root", metavar="DIR", help="dataset folder (VOCdevkit/VOC2012, or a "
                                                    "folder with images/)")
    data.add_argument("--split", default="val", help="VOC split in ImageSets/Segmentation "
                                                     "(default val)")
    data.add_argument("--limit", type=int, metavar="N", help="only the first N dataset images")
    out = parser.add_argument_group("output")
    out.add_argument("--out", default="jaxseg-out", metavar="DIR",
                     help="output folder (default ./jaxseg-out)")
    out.add_argument("--overlay", action="store_true", help="also write <stem>_overlay.png")
    out.add_argument("--heatmaps", action="store_true",
                     help="also write <stem>_maps.png: each label's map as a heat overlay")
    out.add_argument("--overwrite", action="store_true", help="redo images already complete")
    method = parser.add_argument_group("method")
    method.add_argument("--method", metavar="NAME[+NAME]",
                        help="relevance method: chefer (default), clip-es, naclip, or an "
                             "ensemble such as chefer+naclip")
    method.add_argument("--view", choices=VIEWS, help="tta (flips and crops) or native (one "
                        "view at the image's resolution); default: the method's")
    method.add_argument("--refine", choices=REFINE_MODES, help="graphcut (default), crf "
                        "(CLIP-ES's dense CRF; needs jaxseg[crf]) or none (argmax)")
    method.add_argument("--preset", choices=sorted(PRESET_NAMES),
                        help="an author's pipeline end to end: clip-es, clip-es-coco, naclip")
    run = parser.add_argument_group("model and run")
    run.add_argument("--model", default=DEFAULT_MODEL, metavar="ID_OR_DIR",
                     help=f"Hugging Face hub id or checkpoint folder (default {DEFAULT_MODEL})")
    run.add_argument("--batch-size", type=int, default=8, metavar="B",
                     help="images per device call, on each device (default 8); masks depend on "
                          "it, never on the device or process count")
    run.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                     help="compute dtype of CLIP (bfloat16: faster on GPUs and TPUs; softmax "
                          "and LayerNorm stay float32)")
    run.add_argument("--matmul-precision", choices=("default", "high", "highest"),
                     help="JAX's matmul precision (default: the platform's, e.g. one bfloat16 "
                          "pass on TPU, TF32 on recent NVIDIA GPUs; highest: exact float32)")
    run.add_argument("--input-size", type=int, metavar="S",
                     help="CLIP input side of each view (default 224)")
    run.add_argument("--canvas-size", type=int, metavar="C",
                     help="working canvas side (default 512)")
    run.add_argument("--refine-steps", type=int, metavar="N",
                     help="distillation steps of the refinement (default 100; fewer is faster)")
    run.add_argument("--calibrate-levels", type=int, metavar="N",
                     help="graph-cut refinement: refine every image at levels calibrated on "
                          "the maps of N images spread over the run, written to "
                          "OUT/levels.json and read back on a resume; 0: each image at its "
                          "own levels (default: min(100, images) for a run of 50 images or "
                          "more, else 0; a resume refines like the images already written)")
    run.add_argument("--coverage", type=float, metavar="F",
                     help="with calibrated levels: the share of an image's pixels that "
                          "objects of the given labels cover on average (default 0.2, about "
                          "their share in COCO photos of VOC classes)")
    run.add_argument("--compile-cache", default=default_cache_dir(), metavar="DIR",
                     help="JAX compilation cache folder (default %(default)s)")
    run.add_argument("--no-compile-cache", action="store_true",
                     help="do not read or write the compilation cache")
    scale = parser.add_argument_group(
        "devices and hosts", "each process shards its batches over its local devices and "
        "refines in worker processes; several processes (auto-detected under SLURM, Open MPI "
        "and multi-host TPU slices, or given by the three flags below) each take a disjoint "
        "share of the images, writing into the same --out")
    scale.add_argument("--max-devices", type=int, metavar="D",
                       help="use at most D local devices (default: all)")
    scale.add_argument("--refine-workers", type=int, metavar="W",
                       help="refinement worker processes (default: cores - 2, at least 1; 0: "
                            "refine in the main process)")
    scale.add_argument("--coordinator-address", metavar="HOST:PORT",
                       help="jax.distributed coordinator (process 0's address)")
    scale.add_argument("--num-processes", type=int, metavar="N", help="processes in the run")
    scale.add_argument("--process-id", type=int, metavar="I", help="this process, 0 .. N-1")
    run.add_argument("--quiet", action="store_true", help="no progress bar or summary line")
    run.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    return parser


def _parse_labels(text: Optional[str], vocab: str = "voc"):
    if text is None:
        return None
    word = text.strip().lower()
    if word == "all":
        from jaxseg.labels.vocab import load_vocabulary

        return [entry.name for entry in load_vocabulary(vocab)]
    return "auto" if word == "auto" else text.split(",")


def _dataset(args):
    """The items of the run, from image paths or a dataset layout."""
    from jaxseg.run import datasets

    if args.limit is not None and args.limit < 0:
        raise UsageError(f"--limit must be >= 0, got {args.limit}")
    labels = _parse_labels(args.labels, args.vocab)
    if labels is not None and args.labels_file:
        raise UsageError("give either --labels or --labels-file, not both")
    if args.dataset:
        if args.images:
            raise UsageError("give either image files or --dataset, not both")
        if not args.root:
            raise UsageError(f"--dataset {args.dataset} needs --root DIR")
        if args.dataset == "voc":
            if args.labels_file:
                raise UsageError("--dataset voc reads labels from the ground truth; drop "
                                 "--labels-file (or use --labels auto)")
            dataset = datasets.voc_dataset(args.root, args.split, labels, args.limit)
        else:
            dataset = datasets.folder_dataset(args.root, labels, args.labels_file, args.limit)
    elif not args.images:
        raise UsageError("nothing to segment: give image files or --dataset voc|folder --root DIR")
    elif labels is None and not args.labels_file:
        raise UsageError("give labels: --labels cat,sofa, --labels-file FILE or --labels auto")
    else:
        by_stem = datasets.read_labels_file(args.labels_file) if args.labels_file else None
        dataset = datasets.collect_items(args.images, labels, by_stem,
                                         args.labels_file or "the labels file", args.limit)
    return dataset


def _config(args):
    from jaxseg.config import PRESETS, SegmentConfig
    from jaxseg.labels.autolabel import AutoLabelConfig
    from jaxseg.labels.vocab import load_vocabulary
    from jaxseg.maps.config import RelevanceConfig

    config = PRESETS[args.preset] if args.preset else SegmentConfig()
    config = dataclasses.replace(config, auto=AutoLabelConfig(vocabulary=args.vocab))
    if args.method:
        if args.preset:
            raise UsageError("give either --preset or --method, not both")
        names = tuple(name.strip() for name in args.method.split("+"))
        config = dataclasses.replace(config, relevance=RelevanceConfig(
            method=names[0] if len(names) == 1 else names))
    for name, value in (("view", args.view), ("refine_mode", args.refine)):
        if value is not None:
            config = dataclasses.replace(config, **{name: value})
    tta = {name: value for name, value in (("input_size", args.input_size),
                                           ("canvas_size", args.canvas_size)) if value is not None}
    if tta:
        config = dataclasses.replace(config, tta=dataclasses.replace(config.tta, **tta))
    if args.refine_steps is not None:
        if args.refine_steps < 1:
            raise UsageError(f"--refine-steps must be >= 1, got {args.refine_steps}")
        classifier = dataclasses.replace(config.refine.classifier, steps=args.refine_steps)
        config = dataclasses.replace(config, refine=dataclasses.replace(
            config.refine, classifier=classifier))
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.refine_workers is not None and args.refine_workers < 0:
        raise UsageError(f"--refine-workers must be >= 0 (0: refine in the main process), got "
                         f"{args.refine_workers}")
    if args.labels is not None and args.labels.strip().lower() in ("auto", "all"):
        load_vocabulary(args.vocab)  # a bad --vocab is a usage error before any work
    if config.refine_mode == "crf":
        import importlib.util
        if importlib.util.find_spec("pydensecrf") is None:
            raise UsageError("--refine crf needs pydensecrf: pip install 'jaxseg[crf]'")
    return config


def _run(args, console: Console) -> int:
    from jaxseg.run import sharding

    # jax.distributed must connect before anything else touches JAX.
    sharding.initialize_distributed(args.coordinator_address, args.num_processes,
                                    args.process_id, auto=True)
    finish, completed = None, False
    try:
        status, finish = _segment(args, console)
        completed = True
        return status
    finally:
        # Every process reaches the barrier, also after an error, so no host waits forever;
        # what must wait for the whole run (the record of an --overwrite) waits for it.
        if sharding.all_processes("jaxseg-segment-done", completed) and finish is not None:
            finish()


def _segment(args, console: Console):
    """Runs the command; returns its exit status and what process 0 does once every
    process has completed its share (None: nothing)."""
    import jax

    from jaxseg.run import sharding

    from jaxseg.clip.handle import load_clip
    from jaxseg.run import calibration, datasets, plan, runner
    from jaxseg.run.outputs import check_out_dir, complete_stems
    from jaxseg.segmenter import Segmenter

    config = _config(args)
    dataset = _dataset(args)
    extras = [name for name, on in (("overlay", args.overlay), ("maps", args.heatmaps)) if on]
    datasets.refuse_picture_clashes(dataset, extras)
    check_out_dir(args.out)  # before the model loads: else every image would fail to write
    if args.max_devices is not None and args.max_devices < 1:
        raise UsageError(f"--max-devices must be >= 1, got {args.max_devices}")
    configure_compile_cache(None if args.no_compile_cache else args.compile_cache)
    if args.matmul_precision:
        jax.config.update("jax_default_matmul_precision", args.matmul_precision)
    # The folder is read before the model loads, so a refused resume fails fast and the
    # processes of a run, started together by jax.distributed, all read it before any of
    # them writes (each loads the model, and calibrates, first): all plan alike.
    record = None if args.overwrite else calibration.read_record(args.out)
    stems = [item.stem for item in dataset.items]
    done = 0 if args.overwrite else len(complete_stems(args.out, stems))
    calibrate = calibration.plan_calibration(
        args.calibrate_levels, args.coverage, config.refine_mode, len(dataset.items), record,
        done, args.out)
    if calibrate.note and not args.quiet and jax.process_index() == 0:
        console.line(calibrate.note)
    if args.overwrite:
        calibration.check_overwrite(args.out, stems, calibrate.count > 0)
    clip = load_clip(args.model, dtype=jax.numpy.dtype(args.dtype))
    patch = clip.config.vision.patch_size
    if config.tta.input_size < patch:  # also the automatic labels' views, on any view
        raise UsageError(f"--input-size must be at least the model's patch size, {patch}; got "
                         f"{config.tta.input_size}")
    segmenter = Segmenter(clip, config, sharding.data_mesh(args.max_devices))
    items, failures = plan.prepare_items(dataset.items, segmenter, console.warn)
    failures = dataset.failures + failures
    if calibrate.count:
        items, clashes = calibration.drop_record_clashes(items)
        failures += clashes
    # Batches are planned from the whole list, the same in every process; each process
    # runs every N-th one and process 0 reports the listing's errors.
    batch_size = min(args.batch_size, max(1, len(items)))
    calibrated = False
    if calibrate.count:
        # Every process calibrates on the same sample, so all refine alike (and process 0
        # alone reports what the others would repeat).
        own_levels = segmenter
        segmenter = calibration.calibrated_segmenter(
            segmenter, items, calibrate.count, calibrate.coverage, args.out, batch_size,
            console.warn if jax.process_index() == 0 else lambda message: None,
            record=record, write=jax.process_index() == 0,
            settings=calibration.settings_key(args.model, config),
            required=args.calibrate_levels is not None, overwriting=args.overwrite)
        calibrated = segmenter is not own_levels
    finish = None
    if args.overwrite and jax.process_index() == 0:
        # Until every image is redone, the folder holds images of two kinds of levels.
        if not calibrated:
            calibration.mark_overwriting(args.out)
        finish = (functools.partial(calibration.mark_overwriting, args.out, False) if calibrated
                  else functools.partial(calibration.remove_record, args.out))
    batches = plan.process_batches(plan.plan_batches(items, batch_size), jax.process_index(),
                                   jax.process_count())
    if jax.process_index() > 0:
        failures = []
    for path, reason in failures:
        console.failure(path, reason)
    summary = runner.run_dataset(
        batches, segmenter, args.out, batch_size, model_name=args.model,
        extras=extras,
        overwrite=args.overwrite, make_progress=console.progress, report=console.failure,
        refine_workers=args.refine_workers)
    console.bar = None
    failures += summary.failures
    if not args.quiet or summary.interrupted:
        done = len(summary.written)
        rate = done / summary.wall_seconds if summary.wall_seconds > 0 else 0.0
        stages = ", ".join(f"{stage} {seconds:.1f} s" for stage, seconds
                           in sorted(summary.stage_seconds.items()))
        console.line(f"{done} written, {summary.skipped} already complete, {len(failures)} failed "
                     f"in {summary.wall_seconds:.1f} s ({rate:.2f} images/s) -> {args.out}"
                     + (f"; per stage: {stages}" if stages else ""))
    if summary.interrupted is not None:
        raise summary.interrupted
    if failures:
        console.line(f"{len(failures)} input(s) failed:")
        for path, reason in failures:
            console.line(f"  {path}: {reason}")
        return 1, finish
    return 0, finish


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point; returns the exit status (130 after Ctrl-C, 143 after
    SIGTERM, with the summary line printed and every finished image kept)."""
    from jaxseg.run.datasets import DatasetError

    args = build_parser().parse_args(argv)
    console = Console(args.quiet, args.debug)
    with warnings_to(console), stop_on_signals(PROG):
        try:
            return _run(args, console)
        except KeyboardInterrupt as interrupt:
            name = "SIGTERM" if isinstance(interrupt, Terminated) else "interrupt"
            console.line(f"stopped by {name}; run the same command again to resume")
            return 143 if isinstance(interrupt, Terminated) else 130
        except (UsageError, DatasetError, ValueError, OSError) as error:
            # CheckpointError is a ValueError; OSError: e.g. an output folder that cannot be made.
            if args.debug:
                traceback.print_exc()
            console.line(f"{PROG}: error: {' '.join(str(error).split())}")
            return 2
        except Exception as error:  # noqa: BLE001 - one line unless --debug.
            if args.debug:
                traceback.print_exc()
            console.line(f"{PROG}: internal error: {type(error).__name__}: {error} (rerun with "
                         "--debug for the traceback)")
            return 1


if __name__ == "__main__":
    sys.exit(main())
