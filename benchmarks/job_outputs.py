"""The work of a ``segment`` job around the model: writing its outputs, and cleaning each slice's mask.

On a GPU the model is not what a job waits for: SAM 2.1 tiny propagated 512 x 512 x 300 in 1.1 s on an
H200, while the ``.seg.nrrd`` of that volume took 2.9 s to write on the 2-core development CPU. This
script times, in one process, alternating, the medians of ``--repeats``:

- writing a 512 x 512 x ``--slices`` labelmap (``speed.py``'s three tubes as labels 1-3) as ``.seg.nrrd``
  the way MedSegAny writes it now (:data:`medsegany.exporters.SEG_NRRD_GZIP_LEVEL`, label values counted
  over the non-zero voxels) against the way it wrote it before (``before``: pynrrd's gzip level 9 and
  ``np.unique`` over every voxel), and as ``.nii.gz`` (SimpleITK) for comparison; each file is read back
  and must hold the same voxels; the label values alone are timed too (both ways must find the same);
- writing the ``--preview`` PNG at :data:`medsegany.preview.PNG_COMPRESS_LEVEL` against Pillow's default
  level (``before``); both must hold the same pixels;
- keeping the components of a slice's mask that touch the previous slice's
  (:func:`medsegany.mask_ops.components_touching`, labelled on the mask's bounding box with a lookup
  table) against the whole frame labelled and kept with ``np.isin`` (``before``), on the tubes' masks with
  specks around them (a model's stray pixels), one call per slice; the kept pixels must be equal.

Example::

    .venv/bin/python benchmarks/job_outputs.py --output benchmarks/results/job_outputs.json
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from speed import _write_json, machine_info, phantom_kji

# the levels pynrrd (and slicerio) and Pillow write with when not told otherwise
PYNRRD_DEFAULT_GZIP_LEVEL = 9
PILLOW_DEFAULT_PNG_LEVEL = 6


@contextlib.contextmanager
def module_attributes(module: Any, **values: Any) -> Iterator[None]:
    """Inside: ``module``'s attributes set to ``values`` (how a writer ran before); restored after."""
    saved = {name: getattr(module, name) for name in values}
    for name, value in values.items():
        setattr(module, name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(module, name, value)


def seg_nrrd_as_before() -> contextlib.AbstractContextManager:
    """``write_labelmap`` as it wrote a ``.seg.nrrd`` before: gzip level 9, ``np.unique`` over every voxel."""
    from medsegany import exporters

    return module_attributes(
        exporters,
        SEG_NRRD_GZIP_LEVEL=PYNRRD_DEFAULT_GZIP_LEVEL,
        label_values_present=lambda labels: [int(v) for v in np.unique(labels) if v != 0],
    )


def components_touching_before(mask_frame: np.ndarray, reference_frame: np.ndarray) -> np.ndarray:
    """The rule as it ran before: the whole frame labelled, components kept with ``np.isin``."""
    from scipy import ndimage

    labels, count = ndimage.label(mask_frame, structure=np.ones((3, 3), dtype=bool))
    if count <= 1:
        return mask_frame.copy()
    touching = np.unique(labels[reference_frame & mask_frame])
    touching = touching[touching > 0]
    if touching.size == 0:
        touching = np.array([int(np.argmax(np.bincount(labels.ravel())[1:])) + 1])
    return np.isin(labels, touching)


def alternate(
    ways: dict[str, Callable[[], Any]], repeats: int
) -> tuple[dict[str, list[float]], dict[str, float], list[dict]]:
    """Each way once a repeat, the order reversed every other repeat; (seconds, their medians, each
    repeat's results). Each way runs once before, untimed: the first call imports its modules (SciPy's
    ndimage: 0.8 s)."""
    for way in ways.values():
        way()
    seconds: dict[str, list[float]] = {name: [] for name in ways}
    results = []
    for repeat in range(repeats):
        order = list(ways) if repeat % 2 == 0 else list(reversed(ways))
        outcome = {}
        for name in order:
            start = time.perf_counter()
            outcome[name] = ways[name]()
            seconds[name].append(time.perf_counter() - start)
        results.append(outcome)
    return seconds, {name: statistics.median(values) for name, values in seconds.items()}, results


def time_writes(labels_kji: np.ndarray, folder: Path, repeats: int) -> dict[str, Any]:
    import slicerio
    from medsegany.exporters import write_labelmap
    from medsegany.volume import Volume, read_volume

    reference = Volume(np.zeros(labels_kji.shape, np.int16), np.diag([0.8, 0.8, 1.5, 1.0]), name="phantom")

    def before() -> Path:
        with seg_nrrd_as_before():
            return write_labelmap(labels_kji, reference, folder / "before.seg.nrrd")

    ways = {
        "seg_nrrd": lambda: write_labelmap(labels_kji, reference, folder / "now.seg.nrrd"),
        "seg_nrrd_before": before,
        "nii_gz": lambda: write_labelmap(labels_kji, reference, folder / "now.nii.gz"),
    }
    seconds, medians, results = alternate(ways, repeats)
    paths = results[-1]
    voxels_equal = {
        name: bool(
            np.array_equal(
                slicerio.read_segmentation(str(path))["voxels"].transpose(2, 1, 0)
                if name.startswith("seg_nrrd")
                else read_volume(path).voxels_kji,
                labels_kji,
            )
        )
        for name, path in paths.items()
    }
    return {
        "seconds": seconds,
        "median_s": medians,
        "seg_nrrd_before_over_now": medians["seg_nrrd_before"] / medians["seg_nrrd"],
        "file_bytes": {name: path.stat().st_size for name, path in paths.items()},
        "voxels_equal": voxels_equal,
    }


def time_label_values(labels_kji: np.ndarray, repeats: int) -> dict[str, Any]:
    """The label values a .seg.nrrd describes: counted over the non-zero voxels against ``np.unique``."""
    from medsegany.exporters import label_values_present

    seconds, medians, results = alternate(
        {
            "nonzero_count": lambda: label_values_present(labels_kji),
            "unique": lambda: [int(v) for v in np.unique(labels_kji) if v != 0],
        },
        repeats,
    )
    return {
        "seconds": seconds,
        "median_s": medians,
        "unique_over_nonzero_count": medians["unique"] / medians["nonzero_count"],
        "values_equal": all(r["nonzero_count"] == r["unique"] for r in results),
    }


def time_preview(
    voxels_kji: np.ndarray, labels_kji: np.ndarray, folder: Path, repeats: int
) -> dict[str, Any]:
    """The ``--preview`` PNG (the middle slice and four segmented ones) at the level MedSegAny writes it
    now against Pillow's default, which it used before; both must hold the same pixels."""
    from medsegany import preview
    from PIL import Image

    def write(name: str) -> Path:
        return preview.write_preview_png(voxels_kji, labels_kji, 2, len(labels_kji) // 2, folder / name)

    def before() -> Path:
        with module_attributes(preview, PNG_COMPRESS_LEVEL=PILLOW_DEFAULT_PNG_LEVEL):
            return write("before.png")

    seconds, medians, results = alternate({"png": lambda: write("now.png"), "png_before": before}, repeats)
    paths = results[-1]
    return {
        "seconds": seconds,
        "median_s": medians,
        "before_over_now": medians["png_before"] / medians["png"],
        "file_bytes": {name: path.stat().st_size for name, path in paths.items()},
        "image_size": list(Image.open(paths["png"]).size),
        "pixels_equal": bool(
            np.array_equal(np.asarray(Image.open(paths["png"])), np.asarray(Image.open(paths["png_before"])))
        ),
    }


def speckled_masks(labels_kji: np.ndarray, seed: int = 0) -> np.ndarray:
    """Label 1's tube, with 0.2 % stray pixels in a band of rows around it (many components)."""
    rng = np.random.default_rng(seed)
    masks = labels_kji == 1
    rows = np.flatnonzero(masks.any(axis=(0, 2)))
    band = np.zeros(masks.shape[1:], bool)
    band[max(rows[0] - 40, 0) : rows[-1] + 40] = True
    return masks | ((rng.random(masks.shape) < 0.002) & band)


def time_components(masks_kji: np.ndarray, repeats: int) -> dict[str, Any]:
    from medsegany.mask_ops import components_touching

    def per_slice(rule: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> Callable[[], np.ndarray]:
        # each slice against the one before it, as the slice-wise propagation calls it
        return lambda: np.stack([rule(masks_kji[k], masks_kji[k - 1]) for k in range(1, len(masks_kji))])

    seconds, medians, results = alternate(
        {"mask_box": per_slice(components_touching), "before": per_slice(components_touching_before)}, repeats
    )
    calls = len(masks_kji) - 1
    medians = {name: median / calls for name, median in medians.items()}
    return {
        "calls": calls,
        "seconds": seconds,
        "median_s_per_slice": medians,
        "before_over_now": medians["before"] / medians["mask_box"],
        "kept_equal": all(np.array_equal(r["mask_box"], r["before"]) for r in results),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/job_outputs.json"))
    args = parser.parse_args(argv)
    # the tubes (bright, 180 and up) as labels 1-3 by their centres' columns
    voxels = phantom_kji(args.slices, args.size)
    columns = np.broadcast_to(np.arange(args.size), voxels.shape)
    labels_kji = np.where(voxels > 150, 1 + (columns * 3) // args.size, 0).astype(np.uint8)
    report: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": machine_info("cpu"),
        "labelmap_shape_kji": list(labels_kji.shape),
        "labelled_fraction": float(np.count_nonzero(labels_kji) / labels_kji.size),
        "labels": [int(v) for v in np.flatnonzero(np.bincount(labels_kji.ravel()))],
        "repeats": args.repeats,
    }
    with tempfile.TemporaryDirectory(prefix="medsegany_outputs_") as workdir:
        report["writes"] = time_writes(labels_kji, Path(workdir), args.repeats)
        print("writes", report["writes"]["median_s"], file=sys.stderr, flush=True)
        report["preview"] = time_preview(voxels, labels_kji, Path(workdir), args.repeats)
        print("preview", report["preview"]["median_s"], file=sys.stderr, flush=True)
    report["label_values"] = time_label_values(labels_kji, args.repeats)
    print("label values", report["label_values"]["median_s"], file=sys.stderr, flush=True)
    report["components"] = time_components(speckled_masks(labels_kji), args.repeats)
    print("components", report["components"]["median_s_per_slice"], file=sys.stderr, flush=True)
    _write_json(args.output, report)
    equal = (
        all(report["writes"]["voxels_equal"].values())
        and report["label_values"]["values_equal"]
        and report["preview"]["pixels_equal"]
        and report["components"]["kept_equal"]
    )
    return 0 if equal else 1


if __name__ == "__main__":
    raise SystemExit(main())
