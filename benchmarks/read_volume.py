"""Reading a volume file: ``medsegany.volume.read_volume`` against the same read with SimpleITK's copy.

``read_volume`` keeps the voxels in the SimpleITK image's own memory (a read-only view that keeps the
image alive). It used ``sitk.GetArrayFromImage``, which copies every voxel into fresh memory. This script
writes ``speed.py``'s tubes as an int16 volume (512 x 512 x ``--slices``), compressed (``.nii.gz``) and
not (``.nii``), and times both ways in the same process, alternating, the median of ``--repeats``. The
voxels must be equal.

Example::

    .venv/bin/python benchmarks/read_volume.py --slices 1000 --repeats 5 \\
        --output benchmarks/results/read_volume.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from speed import _write_json, machine_info, phantom_kji


def read_with_copy(path: Path) -> np.ndarray:
    """What ``read_volume`` did: SimpleITK's reader, then ``GetArrayFromImage`` (a copy)."""
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def read_in_place(path: Path) -> np.ndarray:
    from medsegany.volume import read_volume

    return read_volume(path).voxels_kji


def time_file(path: Path, repeats: int) -> dict[str, Any]:
    ways = {"copy": read_with_copy, "in_place": read_in_place}
    seconds: dict[str, list[float]] = {name: [] for name in ways}
    equal = True
    for repeat in range(repeats):
        order = list(ways) if repeat % 2 == 0 else list(reversed(ways))
        results = {}
        for name in order:
            start = time.perf_counter()
            results[name] = ways[name](path)
            seconds[name].append(time.perf_counter() - start)
        equal = equal and bool(np.array_equal(results["copy"], results["in_place"]))
        del results
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    return {
        "file_bytes": path.stat().st_size,
        "seconds": seconds,
        "median_s": medians,
        "copy_over_in_place": medians["copy"] / medians["in_place"],
        "voxels_equal": equal,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slices", type=int, default=1000)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/read_volume.json"))
    args = parser.parse_args(argv)
    import SimpleITK as sitk

    report: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": machine_info("cpu"),
        "volume_shape_kji": [args.slices, args.size, args.size],
        "volume_dtype": "int16",
        "repeats": args.repeats,
        "files": {},
    }
    with tempfile.TemporaryDirectory(prefix="medsegany_read_") as workdir:
        image = sitk.GetImageFromArray(phantom_kji(args.slices, args.size).astype(np.int16))
        for suffix in (".nii.gz", ".nii"):
            path = Path(workdir) / f"phantom{suffix}"
            sitk.WriteImage(image, str(path), useCompression=suffix.endswith(".gz"))
            report["files"][suffix] = time_file(path, args.repeats)
            print(suffix, report["files"][suffix]["median_s"], file=sys.stderr, flush=True)
    _write_json(args.output, report)
    return 0 if all(entry["voxels_equal"] for entry in report["files"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
