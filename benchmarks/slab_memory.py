"""Peak memory of segmenting a slice range: inside the whole volume against as a slab of its own.

Before ``medsegany.slab``, ``medsegany segment --slice-range`` (and a memory plan's slab) only limited the
propagation: the session still windowed and masked every slice of the volume. Now the CLI hands the
session the slab alone. This script writes one phantom volume (``speed.py``'s tubes, int16 like a CT,
512 x 512 x ``--slices``), then runs each way in a fresh process and reads that process's peak RSS
(``VmHWM``):

- ``whole``: a :class:`~medsegany.session.SegmentationSession` on the whole volume, propagated with
  ``slice_range`` (the earlier CLI, and still the Slicer panel's way: its session holds the whole volume),
  its labelmap written as the CLI writes it;
- ``slab``: ``medsegany segment --slice-range LO,HI`` (the CLI's own code, in the process).

Both use the bundled LiteMedSAM, the same window and box; the labels written must be equal.

Example::

    LD_PRELOAD=libjemalloc.so.2 .venv/bin/python benchmarks/slab_memory.py --slices 600 --range 20 \\
        --output benchmarks/results/slab_memory.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from child_process import child_env, child_json
from speed import _status_bytes, _write_json, machine_info, object_prompts, phantom_kji

WINDOW = (0.0, 255.0)


def write_volume(path: Path, slices: int, size: int) -> str:
    """The phantom as int16 NIfTI; returns the ``--box-ijk`` value of the middle slice's first tube."""
    import SimpleITK as sitk

    voxels = phantom_kji(slices, size).astype(np.int16)
    sitk.WriteImage(sitk.GetImageFromArray(voxels), str(path))
    prompt = object_prompts(voxels, 1)[0]
    x0, y0, x1, y1 = (round(v) for v in prompt.box_frame_xyxy)
    k = prompt.frame_index
    return f"{x0},{y0},{k},{x1},{y1},{k}"


def run_whole(volume_path: Path, box: str, low: int, high: int, out: Path, device: str) -> None:
    """The slice range inside the whole volume's session, written as the CLI writes its labelmap."""
    from medsegany.exporters import write_labelmap
    from medsegany.models.registry import load_model
    from medsegany.prompts import make_slice_prompts
    from medsegany.session import SegmentationSession
    from medsegany.volume import read_volume

    volume = read_volume(volume_path)
    session = SegmentationSession(volume, load_model("litemedsam", device=device, compile="off"), WINDOW)
    object_id = session.add_object("tube")
    box_ijk = tuple(float(v) for v in box.split(","))
    session.add_prompts(object_id, make_slice_prompts(volume, box_ijk=box_ijk))
    for _ in session.propagate(slice_range=(low, high)):
        pass
    write_labelmap(session.labelmap_kji(), volume, out, segments=session.segments())


def run_slab(volume_path: Path, box: str, low: int, high: int, out: Path, device: str) -> None:
    from medsegany.cli import main

    argv = [str(volume_path), "--box-ijk", box, "--slice-range", f"{low},{high}", "-o", str(out), "-q"]
    window = f"--window={WINDOW[0]:g},{WINDOW[1]:g}"
    code = main(["segment", *argv, window, "--compile", "off", "--device", device])
    if code != 0:
        raise RuntimeError(f"medsegany segment exited {code}")


def child(way: str, volume_path: Path, box: str, low: int, high: int, out: Path, device: str) -> None:
    """One way in this process; prints its peak RSS and seconds as JSON."""
    start = time.perf_counter()
    (run_whole if way == "whole" else run_slab)(volume_path, box, low, high, out, device)
    seconds = time.perf_counter() - start
    print(json.dumps({"peak_rss_bytes": _status_bytes("VmHWM"), "seconds": seconds}))  # for the parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slices", type=int, default=600)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--range", type=int, default=20, help="slices segmented, around the middle one")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/slab_memory.json"))
    parser.add_argument(
        "--child", nargs=5, metavar=("WAY", "VOLUME", "BOX", "LO,HI", "OUT"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.child:
        way, volume, box, span, out = args.child
        low, high = (int(v) for v in span.split(","))
        child(way, Path(volume), box, low, high, Path(out), args.device)
        return 0
    import SimpleITK as sitk

    middle = args.slices // 2
    low, high = max(0, middle - args.range // 2), min(args.slices - 1, middle + (args.range - 1) // 2)
    env = child_env()
    report: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": machine_info(args.device),
        "volume_shape_kji": [args.slices, args.size, args.size],
        "volume_dtype": "int16",
        "slice_range": [low, high],
        "model": "litemedsam (bundled), eager (--compile off), the window 0..255",
    }
    with tempfile.TemporaryDirectory(prefix="medsegany_slab_") as workdir:
        folder = Path(workdir)
        volume = folder / "phantom.nii.gz"
        box = write_volume(volume, args.slices, args.size)
        ways: dict[str, Any] = {}
        for way in ("whole", "slab"):
            out = folder / f"{way}.nii.gz"
            command = [sys.executable, __file__, "--child", way, str(volume), box, f"{low},{high}", str(out)]
            ways[way] = child_json([*command, "--device", args.device], env, way)
            print(f"{way}: {ways[way]}", file=sys.stderr, flush=True)
        labels = {way: sitk.GetArrayFromImage(sitk.ReadImage(str(folder / f"{way}.nii.gz"))) for way in ways}
    report["ways"] = ways
    report["same_labels"] = bool(np.array_equal(labels["whole"], labels["slab"]))
    report["labelled_slices"] = int(labels["slab"].any(axis=(1, 2)).sum())
    report["peak_rss_whole_over_slab"] = ways["whole"]["peak_rss_bytes"] / ways["slab"]["peak_rss_bytes"]
    report["peak_rss_saved_mib"] = (ways["whole"]["peak_rss_bytes"] - ways["slab"]["peak_rss_bytes"]) / 2**20
    _write_json(args.output, report)
    print(
        json.dumps({k: report[k] for k in ("same_labels", "peak_rss_whole_over_slab", "peak_rss_saved_mib")})
    )
    return 0 if report["same_labels"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
