"""Segment a folder of new images with a finished run: `python -m stego_steps.stages.segment_images --run
results/demo/runs/default/seed0 --images my_photos --out my_photos_segmented [--crf]`.

The run folder provides the backbone and how the run computed its features — name, weights file, seed (of a
`_random` backbone), precision, store dtype, batch size, evaluation resolution — and the class names (attributes
of the evaluation codes `codes.h5`, copied there from the feature store), the head (`head.pt`), the cluster
centroids (`centroids.npy`) and, where the run had labels, the Hungarian cluster → class mapping
(`mapping/cluster_{raw,crf}.csv`) and the linear probe (`linear.pt`). `--weights` names the weights file where
it moved since the run. The head is checked against the network as in every other stage: a head trained on
another backbone's features is refused with a message naming it.

For every image `NAME.ext` it writes, at the image's own width and height:
- `NAME.png`: the label map, 8-bit (16-bit when there are more than 255 ids). With a mapping these are class
  ids (the class's row in the run's class list; 255 = a cluster the matching left without a class); without one (or with
  `--cluster-ids`) the cluster ids. With `--probe linear` always class ids.
- `NAME_overlay.png`: the image blended half and half with the label colours (those of the figures stage;
  `legend.csv` lists id, name and colour);
- with `--crf`, `NAME_crf.png` and `NAME_crf_overlay.png` after the dense CRF.

How any size is handled: the image is resized (PIL NEAREST, as in the evaluation transform) so that its short
side is the run's evaluation resolution (or `--short-side`), i.e. objects appear at the scale the head was
evaluated at; its long side is rounded to a multiple of the backbone stride. Square windows of the evaluation
resolution slide over it with `--overlap` (default one half), each window goes through the backbone with flip
test-time augmentation and the head, and the codes of overlapping windows are averaged on the common feature
grid. Windows rather than the whole resized image: the backbone then always sees the input size it was
evaluated at (a ViT's positional embeddings are not re-interpolated), memory per window is fixed, and windows of
all images fill the same batches. Features are computed by the extraction's own function, with the run's
precision, and rounded as the run's store keeps them (float16, or int8 with a scale per token); batches hold
as many windows as the extraction's batches held images. So an image of exactly the evaluation size is
processed exactly like the evaluation stage processes its crops. The code grid is then upsampled bilinearly
to the original size in blocks of rows (bounded memory for very large images) and turned into
log-probabilities as in the segment stage. The CRF runs on the resized image (a full-resolution CRF of a large
photo would need gigabytes) and its labels are upsampled with nearest neighbours.

Memory per image does not grow with its aspect ratio: an image more than MAX_ASPECT times longer than wide (the
limit of `prepare`) is skipped, so the working image has at most MAX_ASPECT · short side² pixels (the
windows, the code grid and the CRF live there); only the label maps and overlays have the original size, in
blocks of rows where they are computed.

Files that cannot be read as images, and images of a more extreme aspect ratio, are skipped with a warning
naming them and the reason, counted at the end and listed in `skipped.txt`; the command fails (a named
error) only when no image could be segmented.
"""

from __future__ import annotations

import logging
from pathlib import Path

from stego_steps import images as image_io
from stego_steps.artifacts import write_csv, write_text
from stego_steps.cli import base_parser, parse_stage_args, progress
from stego_steps.errors import UserError, cli
from stego_steps.segmenter import Segmenter, find_run, output_stems, save_label, save_overlay

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> None:
    parser = base_parser(__doc__, device=True)
    parser.add_argument("--run", type=Path, required=True,
                        help="a finished run's folder, e.g. results/demo/runs/default/seed0")
    parser.add_argument("--images", type=Path, required=True, help="folder of images (any size, any aspect)")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--weights", help="the run's backbone weights file, where it moved since the run")
    parser.add_argument("--probe", choices=("cluster", "linear"), default="cluster")
    parser.add_argument("--cluster-ids", action="store_true", help="write cluster ids even where a mapping exists")
    parser.add_argument("--crf", action="store_true", help="also write the CRF-refined labels")
    parser.add_argument("--short-side", type=int, help="working short side (default: the run's eval resolution)")
    parser.add_argument("--overlap", type=float, default=0.5, help="overlap of neighbouring windows")
    parser.add_argument("--batch-size", type=int,
                        help="windows per backbone batch (default: the batch size of the run's extraction)")
    args = parse_stage_args(parser, argv)
    run = find_run(args.run)
    seg = Segmenter(run, weights=args.weights, probe=args.probe, cluster_ids=args.cluster_ids,
                    short_side=args.short_side, overlap=args.overlap, crf=args.crf, device=args.device,
                    batch_size=args.batch_size)
    paths = image_io.folder_files(args.images)
    stems = output_stems(paths)
    args.out.mkdir(parents=True, exist_ok=True)
    write_csv(args.out / "legend.csv", seg.legend())
    done, skipped = 0, []
    results = seg.segment_paths(paths)
    for path, result in progress(results, desc="segment images", total=len(paths)):
        if isinstance(result, Exception):
            log.warning("skipping %s: %s", path, result)
            skipped.append(path)
            continue
        original, labels = result
        for kind, ids in labels.items():
            suffix = "" if kind == "raw" else "_crf"
            save_label(args.out / f"{stems[path]}{suffix}.png", ids)
            save_overlay(args.out / f"{stems[path]}{suffix}_overlay.png", original, ids, seg.colours)
        done += 1
    write_text(args.out / "skipped.txt", "".join(f"{p}\n" for p in skipped))
    log.info("segmented %d of %d files into %s; skipped %d%s", done, len(paths), args.out, len(skipped),
             f" ({', '.join(p.name for p in skipped)})" if skipped else "")
    if not done:
        raise UserError(f"no image in {args.images} could be segmented ({len(skipped)} files skipped, listed in "
                        f"{args.out / 'skipped.txt'} and above with the reasons): put readable images there")


if __name__ == "__main__":
    cli(main)
