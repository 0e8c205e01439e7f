"""One-box accuracy benchmark on labelled volumes (the format of ../shared/data/cases.json).

Protocol (fixed): axis K; key slice = the K slice with the largest label area; one box = that slice's
label bounding box with each edge moved outward by a random 0-10 % of the box's width/height (numpy
default_rng seeded with [0, CRC32(case id)], so each case's jitter is the same whatever cases run);
no other interaction. Each scheme segments the key slice from that box and propagates both ways.
``--axis J`` (or ``I``) runs the same protocol on that axis' frames (rows K, columns I; rows K, columns J):
key slice = its slice with the largest label area, the box from that slice's label, the same jitter.
``--frame-pixels as-given`` gives a 2D model those frames with their own, non-square pixels
(``SegmentationSession(square_pixels=False)``; default ``square``: :mod:`medsegany.frame_aspect`).
``--min-anisotropy 2`` keeps the cases whose frames along the axis have pixels at least twice as long one
way as the other (the volume's spacing; axis K frames of almost every scan are square: ratio 1).
Schemes: ``ours`` (medsegany's default settings), ``naive`` (next box = previous mask's bounding box
+ 3 px, stop at an empty mask), ``oracle`` (the label's own box on every labelled slice; a ceiling).

Example::

    python benchmarks/accuracy.py --cases ../shared/data/cases.json --model litemedsam \
        --out benchmarks/results/accuracy_litemedsam.json

The JSON holds per case and scheme: 3D Dice, slices predicted vs labelled, seconds per slice, and means
per modality with manual and automatic labels kept apart. Embeddings are shared by the schemes of a case
(the first scheme, ``ours``, pays the encoder; its seconds per slice include it).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import zlib
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SCHEMES = ("ours", "naive", "oracle")
AXES = {"I": 0, "J": 1, "K": 2}
FRAME_PIXELS = ("square", "as-given")


def label_frames(label_kji: np.ndarray, axis: int) -> np.ndarray:
    """The label's frames along IJK ``axis``, first index the slice, rows and columns as
    :func:`medsegany.slices.frame_of` gives them (K: [k, j, i]; J: [j, k, i]; I: [i, k, j]); a view."""
    return np.moveaxis(label_kji, 2 - axis, 0)


def frame_anisotropy(spacing_ijk, axis: int) -> float:
    """The longer over the shorter side of the pixels of the frames along ``axis`` (1.0: square)."""
    from medsegany.frame_aspect import frame_spacing_mm

    row_mm, col_mm = frame_spacing_mm(tuple(spacing_ijk), axis)
    return max(row_mm, col_mm) / min(row_mm, col_mm)


def box_ijk_on(axis: int, key: int, box_xyxy) -> tuple[float, ...]:
    """(i0, j0, k0, i1, j1, k1) of a frame box (x0, y0, x1, y1) on slice ``key`` of ``axis``."""
    x0, y0, x1, y1 = (float(v) for v in box_xyxy)
    if axis == 2:  # rows J, columns I
        return (x0, y0, key, x1, y1, key)
    if axis == 1:  # rows K, columns I
        return (x0, key, y0, x1, key, y1)
    return (key, x0, y0, key, x1, y1)  # axis I: rows K, columns J


def jittered_key_box(case_id: str, label_kji: np.ndarray, axis: int = 2) -> tuple[int, np.ndarray]:
    """(key slice along ``axis``, box_frame_xyxy) per the protocol above."""
    frames = label_frames(label_kji, axis)
    areas = frames.sum(axis=(1, 2))
    key = int(np.argmax(areas))
    rows = np.flatnonzero(frames[key].any(axis=1))
    cols = np.flatnonzero(frames[key].any(axis=0))
    x0, x1, y0, y1 = cols[0], cols[-1], rows[0], rows[-1]
    width, height = x1 - x0 + 1, y1 - y0 + 1
    rng = np.random.default_rng([0, zlib.crc32(case_id.encode())])
    fractions = rng.uniform(0.0, 0.10, size=4)
    box = np.array(
        [
            x0 - fractions[0] * width,
            y0 - fractions[1] * height,
            x1 + fractions[2] * width,
            y1 + fractions[3] * height,
        ]
    )
    frame_height, frame_width = frames.shape[1:]
    return key, np.clip(box, 0, [frame_width - 1, frame_height - 1, frame_width - 1, frame_height - 1])


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def label_origin_kind(case: dict) -> str:
    return "automatic" if "automatic" in case.get("label_origin", "").lower() else "manual"


def intensity_of(case: dict):
    from medsegany.intensity import explicit_window

    hint = case.get("intensity", {})
    if "window" in hint:
        return explicit_window(*hint["window"])
    return "percentile"


def run_scheme(
    scheme: str, session, label_kji: np.ndarray, key: int, box_xyxy: np.ndarray, axis: int = 2
) -> dict:
    """Segment with one scheme as a new object of ``session`` (so every scheme reuses the embeddings),
    on the frames along IJK ``axis``."""
    from medsegany.prompts import make_slice_prompts
    from medsegany.propagation import PropagationSettings

    started = time.perf_counter()
    session.settings = PropagationSettings.naive() if scheme == "naive" else PropagationSettings()
    object_id = session.add_object(scheme)
    stops = {}
    frames = label_frames(label_kji, axis)
    if scheme == "oracle":
        for k in np.flatnonzero(frames.any(axis=(1, 2))):
            rows = np.flatnonzero(frames[k].any(axis=1))
            cols = np.flatnonzero(frames[k].any(axis=0))
            # a label one voxel wide (PET edges) still needs a box with width: half a voxel each side
            x0, x1 = (cols[0], cols[-1]) if cols[-1] > cols[0] else (cols[0] - 0.5, cols[0] + 0.5)
            y0, y1 = (rows[0], rows[-1]) if rows[-1] > rows[0] else (rows[0] - 0.5, rows[0] + 0.5)
            box_ijk = box_ijk_on(axis, int(k), (x0, y0, x1, y1))
            session.add_prompts(object_id, make_slice_prompts(session.volume, box_ijk=box_ijk, axis=axis))
    else:
        box_ijk = box_ijk_on(axis, key, box_xyxy)
        session.add_prompts(object_id, make_slice_prompts(session.volume, box_ijk=box_ijk, axis=axis))
        for _ in session.propagate(object_ids=[object_id]):
            pass
        stops = {str(k): v for k, v in session.objects[object_id].stop_reasons.items()}
    predicted_kji = session.mask_kji(object_id)
    seconds = time.perf_counter() - started
    predicted_slices = np.flatnonzero(label_frames(predicted_kji, axis).any(axis=(1, 2)))
    labelled = np.flatnonzero(frames.any(axis=(1, 2)))
    visited = max(1, len(predicted_slices) + len(stops))
    return {
        "dice": round(dice(predicted_kji, label_kji), 4),
        "slices_predicted": len(predicted_slices),
        "slices_labelled": len(labelled),
        "predicted_range": (
            [int(predicted_slices[0]), int(predicted_slices[-1])] if len(predicted_slices) else None
        ),
        "labelled_range": [int(labelled[0]), int(labelled[-1])],
        "overrun_slices": int(np.setdiff1d(predicted_slices, labelled).size),
        "seconds": round(seconds, 2),
        "seconds_per_slice": round(seconds / visited, 3),
        "stop_reasons": stops,
    }


def summarise(results: list[dict], schemes: list[str]) -> dict:
    summary: dict = {}
    for scheme in schemes:
        rows = [r for r in results if scheme in r["schemes"]]
        groups: dict[str, list[float]] = {}
        for r in rows:
            for group in (
                "all",
                f"{r['modality']}/{r['label_kind']}",
                f"all/{r['label_kind']}",
                r["modality"],
            ):
                groups.setdefault(group, []).append(r["schemes"][scheme]["dice"])
        summary[scheme] = {
            group: {"mean_dice": round(float(np.mean(v)), 4), "cases": len(v)}
            for group, v in sorted(groups.items())
        }
    if "ours" in schemes and "naive" in schemes:
        deltas = [r["schemes"]["ours"]["dice"] - r["schemes"]["naive"]["dice"] for r in results]
        summary["ours_minus_naive"] = {
            "mean": round(float(np.mean(deltas)), 4),
            "worst": round(float(np.min(deltas)), 4),
            "worst_case": results[int(np.argmin(deltas))]["id"],
            "cases_worse_by_more_than_0.05": [r["id"] for r, d in zip(results, deltas) if d < -0.05],
        }
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", required=True, type=Path)
    parser.add_argument("--model", default="litemedsam")
    parser.add_argument("--out", "--output", required=True, type=Path)
    parser.add_argument("--schemes", default="ours,naive,oracle")
    parser.add_argument("--only", nargs="*", help="case ids to run (default: all)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--embedding-cache", type=Path, help="folder to keep frame embeddings between runs")
    parser.add_argument("--precision", default="float32", choices=["auto", "float32", "bfloat16"])
    parser.add_argument("--compile", default="off", choices=["auto", "on", "off"])
    parser.add_argument(
        "--axis", default="K", choices=sorted(AXES), help="the axis whose slices are prompted and propagated"
    )
    parser.add_argument(
        "--frame-pixels",
        default="square",
        choices=FRAME_PIXELS,
        help="2D models see frames with non-square pixels resampled to square ones, or as given",
    )
    parser.add_argument(
        "--min-anisotropy",
        type=float,
        default=None,
        help="only cases whose frames along --axis have pixels at least this many times longer one way",
    )
    args = parser.parse_args(argv)
    axis = AXES[args.axis]

    from medsegany.models.registry import load_model
    from medsegany.session import SegmentationSession
    from medsegany.volume import read_volume

    schemes = [s for s in args.schemes.split(",") if s]
    unknown = set(schemes) - set(SCHEMES)
    if unknown:
        parser.error(f"unknown schemes {sorted(unknown)}; choose from {SCHEMES}")
    data = json.loads(args.cases.read_text(encoding="utf-8"))
    root = args.cases.parent
    model = load_model(args.model, device=args.device, precision=args.precision, compile=args.compile)
    if args.embedding_cache:
        from disk_cache import DiskCachedModel

        model = DiskCachedModel(model, args.embedding_cache)
    results = []
    for case in data["cases"]:
        if args.only and case["id"] not in args.only:
            continue
        volume = read_volume(root / case["image"])
        anisotropy = frame_anisotropy(volume.spacing_ijk, axis)
        if args.min_anisotropy is not None and anisotropy < args.min_anisotropy:
            continue
        label_kji = np.isin(read_volume(root / case["label"]).voxels_kji, case["label_values"])
        key, box = jittered_key_box(case["id"], label_kji, axis)
        # One session per case: every scheme is an object of it and reuses the frame embeddings.
        session = SegmentationSession(
            volume,
            model,
            intensity=intensity_of(case),
            max_cached_frames=100_000,
            square_pixels=args.frame_pixels == "square",
        )

        row = {
            "id": case["id"],
            "modality": case["modality"],
            "label_kind": label_origin_kind(case),
            "key_slice": key,
            "frame_pixel_ratio": round(anisotropy, 3),
            "box_frame_xyxy": [round(float(v), 2) for v in box],
            "schemes": {},
        }
        for scheme in schemes:
            row["schemes"][scheme] = run_scheme(scheme, session, label_kji, key, box, axis)
        results.append(row)
        print(
            case["id"].ljust(36),
            "  ".join(f"{s} {row['schemes'][s]['dice']:.3f}" for s in schemes),
            flush=True,
        )
        # after each case: a long run stopped part way keeps the cases it finished
        output = write_report(args, argv, results, schemes, finished=False)
    output = write_report(args, argv, results, schemes, finished=True)
    print(json.dumps(output["summary"], indent=1))
    return 0


def write_report(args, argv, results: list[dict], schemes: list[str], finished: bool) -> dict:
    """Write the JSON report of the cases done so far (``finished``: every case chosen was run)."""
    import torch

    output = {
        "benchmark": f"accuracy one-box protocol, axis {args.axis}",
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *(argv or sys.argv[1:])]),
        "model": args.model,
        "axis": args.axis,
        "frame_pixels": args.frame_pixels,
        "min_anisotropy": args.min_anisotropy,
        "finished": finished,
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "device": args.device,
        },
        "summary": summarise(results, schemes) if results else {},
        "cases": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(output, indent=1))
    return output


if __name__ == "__main__":
    sys.exit(main())
