"""One-box accuracy benchmark on labelled volumes (the format of ../shared/data/cases.json).

Protocol (fixed): axis K; key slice = the K slice with the largest label area; one box = that slice's
label bounding box with each edge moved outward by a random 0-10 % of the box's width/height (numpy
default_rng seeded with [0, CRC32(case id)], so each case's jitter is the same whatever cases run);
no other interaction. Each scheme segments the key slice from that box and propagates both ways.
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


def jittered_key_box(case_id: str, label_kji: np.ndarray) -> tuple[int, np.ndarray]:
    """(key slice k, box_frame_xyxy) per the protocol above."""
    areas = label_kji.sum(axis=(1, 2))
    key = int(np.argmax(areas))
    rows = np.flatnonzero(label_kji[key].any(axis=1))
    cols = np.flatnonzero(label_kji[key].any(axis=0))
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
    frame_height, frame_width = label_kji.shape[1:]
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


def run_scheme(scheme: str, session, label_kji: np.ndarray, key: int, box_xyxy: np.ndarray) -> dict:
    """Segment with one scheme as a new object of ``session`` (so every scheme reuses the embeddings)."""
    from medsegany.prompts import make_slice_prompts
    from medsegany.propagation import PropagationSettings

    started = time.perf_counter()
    session.settings = PropagationSettings.naive() if scheme == "naive" else PropagationSettings()
    object_id = session.add_object(scheme)
    stops = {}
    if scheme == "oracle":
        for k in np.flatnonzero(label_kji.any(axis=(1, 2))):
            rows = np.flatnonzero(label_kji[k].any(axis=1))
            cols = np.flatnonzero(label_kji[k].any(axis=0))
            # a label one voxel wide (PET edges) still needs a box with width: half a voxel each side
            x0, x1 = (cols[0], cols[-1]) if cols[-1] > cols[0] else (cols[0] - 0.5, cols[0] + 0.5)
            y0, y1 = (rows[0], rows[-1]) if rows[-1] > rows[0] else (rows[0] - 0.5, rows[0] + 0.5)
            box_ijk = (x0, y0, k, x1, y1, k)
            session.add_prompts(object_id, make_slice_prompts(session.volume, box_ijk=box_ijk))
    else:
        box_ijk = (box_xyxy[0], box_xyxy[1], key, box_xyxy[2], box_xyxy[3], key)
        session.add_prompts(object_id, make_slice_prompts(session.volume, box_ijk=box_ijk))
        for _ in session.propagate(object_ids=[object_id]):
            pass
        stops = {str(k): v for k, v in session.objects[object_id].stop_reasons.items()}
    predicted_kji = session.mask_kji(object_id)
    seconds = time.perf_counter() - started
    predicted_slices = np.flatnonzero(predicted_kji.any(axis=(1, 2)))
    labelled = np.flatnonzero(label_kji.any(axis=(1, 2)))
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
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--schemes", default="ours,naive,oracle")
    parser.add_argument("--only", nargs="*", help="case ids to run (default: all)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--embedding-cache", type=Path, help="folder to keep frame embeddings between runs")
    parser.add_argument("--precision", default="float32", choices=["auto", "float32", "bfloat16"])
    parser.add_argument("--compile", default="off", choices=["auto", "on", "off"])
    args = parser.parse_args(argv)

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
        label_kji = np.isin(read_volume(root / case["label"]).voxels_kji, case["label_values"])
        key, box = jittered_key_box(case["id"], label_kji)
        # One session per case: every scheme is an object of it and reuses the frame embeddings.
        session = SegmentationSession(volume, model, intensity=intensity_of(case), max_cached_frames=100_000)

        row = {
            "id": case["id"],
            "modality": case["modality"],
            "label_kind": label_origin_kind(case),
            "key_slice": key,
            "box_frame_xyxy": [round(float(v), 2) for v in box],
            "schemes": {},
        }
        for scheme in schemes:
            row["schemes"][scheme] = run_scheme(scheme, session, label_kji, key, box)
        results.append(row)
        print(
            case["id"].ljust(36),
            "  ".join(f"{s} {row['schemes'][s]['dice']:.3f}" for s in schemes),
            flush=True,
        )
    import torch

    output = {
        "benchmark": "accuracy one-box protocol, axis K",
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *(argv or sys.argv[1:])]),
        "model": args.model,
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "device": args.device,
        },
        "summary": summarise(results, schemes),
        "cases": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(output, indent=1))
    print(json.dumps(output["summary"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
