"""What writing one AI slice into a Slicer segment costs on the main thread, with and without 3D shown.

Every slice a run yields is written into the segment by Slicer's main thread
(:class:`medsegany.mrml_segment.SegmentWriter`, ``slicer-core`` here: the same MRML and segmentation
classes, no rendering). For a 512 x 512 x N volume whose target segment already holds ``--filled`` slices
(a previous run), this script writes ``--slices`` more slices of a disc and times each write:

- ``plain``: the segmentation has no 3D surface (the Segment Editor's "Show 3D" off);
- ``3d_slicer``: surfaces shown, the writer without the deferral, as Slicer's own API behaves: every
  write converts the whole segment's surface again (``defer_surface=False``);
- ``3d_medsegany``: surfaces shown, the writer with :mod:`medsegany.mrml_surface`: removed once, rebuilt
  every few seconds and when the run ends (``close_s``, counted in the total);
- ``plain_batched`` and ``3d_medsegany_batched``: the same, ``--batch`` neighbouring slices per call
  (``SegmentWriter.write_slices``), as the panel writes what arrived between two of its polls (50 ms)
  when the model yields a slice every 10 ms (SAM 2 on a GPU). Per slice = per call / ``--batch``.

On the 3D paths a stand-in for Slicer's 3D view observes the segmentation node: like
``vtkMRMLSegmentationsDisplayableManager3D``, at each ``RepresentationModified`` or ``SegmentModified``
event it creates the surface of any segment that lacks one, at once (``view_conversions`` counts the
events at which the target lacked its surface). The surfaces at the end of the 3D paths are compared
(points and bounds).

Example::

    .venv/bin/python benchmarks/segment_writes.py --output benchmarks/results/segment_writes.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "Testing" / "Python"))  # the test scene
sys.path.insert(0, str(Path(__file__).resolve().parent))

from speed import _write_json, machine_info

PATHS = ("plain", "plain_batched", "3d_slicer", "3d_medsegany", "3d_medsegany_batched")


def scene_with_segment(shape_kji: tuple[int, int, int], filled: int, in_3d: bool) -> tuple[Any, ...]:
    """A scene, a volume, a segmentation whose target holds ``filled`` slices of a disc (and 3D)."""
    from medsegany.mrml_segment import SegmentWriter
    from slicer_scene_testing import add_segmentation, add_volume_node, make_scene

    scene, segmentations_logic = make_scene()
    volume_node = add_volume_node(scene, np.zeros(shape_kji, np.float32))
    segmentation, (target, _) = add_segmentation(scene, volume_node)
    writer = SegmentWriter(segmentation, target, volume_node)
    for k in range(filled):
        writer.write_slice(2, k, disc(shape_kji[1:], k))
    writer.close()
    if in_3d:
        segmentation.CreateClosedSurfaceRepresentation()
    return scene, segmentations_logic, volume_node, segmentation, target


def disc(shape: tuple[int, int], k: int) -> np.ndarray:
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    radius = 0.16 * min(shape) * (1.0 + 0.2 * np.sin(k / 7.0))
    return (rows - shape[0] / 2) ** 2 + (cols - shape[1] / 2) ** 2 < radius**2


def run_path(
    path: str, shape_kji: tuple[int, int, int], filled: int, slices: int, batch: int
) -> dict[str, Any]:
    from medsegany.mrml_segment import SegmentWriter
    from medsegany.mrml_surface import closed_surface_name
    from slicer_scene_testing import ThreeDView

    scene, segmentations_logic, volume_node, segmentation, target = scene_with_segment(
        shape_kji, filled, in_3d=path.startswith("3d")
    )
    view = ThreeDView(segmentation, target) if path.startswith("3d") else None
    writer = SegmentWriter(segmentation, target, volume_node, defer_surface=path.startswith("3d_medsegany"))
    per_call = batch if path.endswith("_batched") else 1
    # made before the clock starts: a 512 x 512 disc costs ~6 ms, as much as a batched write
    masks = {k: disc(shape_kji[1:], k) for k in range(filled, filled + slices)}
    seconds = []
    start = time.perf_counter()
    for first in range(filled, filled + slices, per_call):
        indices = range(first, min(first + per_call, filled + slices))
        before = time.perf_counter()
        writer.write_slices(2, [(k, masks[k]) for k in indices])
        writer.refresh_surface()  # as the panel does after each batch of slices
        seconds.append((time.perf_counter() - before) / len(indices))
    rebuilds_during_run = writer.surface.rebuilds
    before = time.perf_counter()
    writer.close()
    close_s = time.perf_counter() - before
    total_s = time.perf_counter() - start
    surface = segmentation.GetSegmentation().GetSegment(target).GetRepresentation(closed_surface_name())
    result = {
        "path": path,
        "write_s_median": statistics.median(seconds),
        "write_s_max": max(seconds),
        "close_s": close_s,
        "total_s": total_s,
        "surface_rebuilds_during_run": rebuilds_during_run,
        "view_conversions": None if view is None else view.conversions,
        "surface_points": None if surface is None else surface.GetNumberOfPoints(),
        "surface_bounds": None if surface is None else list(surface.GetBounds()),
    }
    segmentations_logic.SetMRMLScene(None)
    scene.Clear(1)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slices", type=int, default=30, help="slices written and timed")
    parser.add_argument("--filled", type=int, default=50, help="slices the segment holds before")
    parser.add_argument("--depth", type=int, default=100, help="slices of the volume")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=5, help="slices per call on the _batched paths")
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/segment_writes.json"))
    args = parser.parse_args(argv)
    shape_kji = (args.depth, args.size, args.size)
    report: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": machine_info("cpu"),
        "shape_kji": list(shape_kji),
        "filled_before": args.filled,
        "slices_written": args.slices,
        "batch": args.batch,
        "paths": {},
    }
    for path in PATHS:
        result = run_path(path, shape_kji, args.filled, args.slices, args.batch)
        report["paths"][path] = result
        median_ms, max_ms = 1000 * result["write_s_median"], 1000 * result["write_s_max"]
        print(
            f"{path}: {median_ms:.1f} ms a slice (max {max_ms:.0f}), "
            f"close {result['close_s']:.2f} s, total {result['total_s']:.1f} s",
            file=sys.stderr,
        )
    paths = report["paths"]
    report["ratios"] = {
        "3d_slicer_over_3d_medsegany_total": paths["3d_slicer"]["total_s"] / paths["3d_medsegany"]["total_s"],
        "3d_slicer_over_3d_medsegany_per_slice": paths["3d_slicer"]["write_s_median"]
        / paths["3d_medsegany"]["write_s_median"],
        "plain_over_plain_batched_per_slice": paths["plain"]["write_s_median"]
        / paths["plain_batched"]["write_s_median"],
        "3d_slicer_over_3d_medsegany_batched_total": paths["3d_slicer"]["total_s"]
        / paths["3d_medsegany_batched"]["total_s"],
    }
    surfaces = [paths[name] for name in ("3d_slicer", "3d_medsegany", "3d_medsegany_batched")]
    report["same_surface"] = all(
        other["surface_points"] == surfaces[0]["surface_points"]
        and np.allclose(other["surface_bounds"], surfaces[0]["surface_bounds"])
        for other in surfaces[1:]
    )
    _write_json(args.output, report)
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
