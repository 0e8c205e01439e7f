"""A labelling loop over N volumes: N ``medsegany segment`` processes against one ``medsegany batch``.

Each ``segment`` process imports PyTorch, loads the model and, on a CPU, compiles LiteMedSAM's encoder
(25-45 s on the 2-core development machine; not cacheable across processes). ``batch`` does that once.
This script writes N phantom volumes (``speed.py``'s tubes, 512 x 512 x ``--slices``, NIfTI) and one box
each, runs both ways with the same options (the CLI's defaults: compile on a CPU), times the wall clock
of the processes, and checks that both ways wrote the same labels.

Example::

    LD_PRELOAD=libjemalloc.so.2 .venv/bin/python benchmarks/batch_cli.py --volumes 3 --slices 20 \\
        --output benchmarks/results/batch_cli.json
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from child_process import child_env, run_child
from speed import _write_json, machine_info, object_prompts, phantom_kji


def write_volumes(folder: Path, count: int, slices: int, size: int) -> list[tuple[Path, str]]:
    """(path, --box-ijk value) of each phantom volume, a different seed each."""
    import SimpleITK as sitk

    volumes = []
    for n in range(count):
        voxels = phantom_kji(slices, size, seed=n)
        path = folder / f"phantom_{n}.nii.gz"
        sitk.WriteImage(sitk.GetImageFromArray(voxels), str(path))
        prompt = object_prompts(voxels, 1)[0]
        x0, y0, x1, y1 = (round(v) for v in prompt.box_frame_xyxy)
        k = prompt.frame_index
        volumes.append((path, f"{x0},{y0},{k},{x1},{y1},{k}"))
    return volumes


def run(command: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    run_child(command, env, " ".join(command))
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--volumes", type=int, default=3)
    parser.add_argument("--slices", type=int, default=20)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--extra", default="", help='more options for both ways, one string: "--compile off"')
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/batch_cli.json"))
    args = parser.parse_args(argv)
    import SimpleITK as sitk

    medsegany = [sys.executable, "-m", "medsegany.cli"]
    env = child_env(MEDSEGANY_COMPILE=None)  # the CLI's default: compile LiteMedSAM's encoder on a CPU
    report: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": machine_info(args.device),
        "volumes": args.volumes,
        "slices": args.slices,
        "size": args.size,
        "model": "litemedsam (bundled), the CLI's defaults",
    }
    with tempfile.TemporaryDirectory(prefix="medsegany_batch_") as workdir:
        folder = Path(workdir)
        volumes = write_volumes(folder, args.volumes, args.slices, args.size)
        options = ["--device", args.device, *shlex.split(args.extra)]
        separate = 0.0
        per_process = []
        for n, (path, box) in enumerate(volumes):
            seconds = run(
                [
                    *medsegany,
                    "segment",
                    str(path),
                    "--box-ijk",
                    box,
                    "-o",
                    str(folder / f"one_{n}.nii.gz"),
                    "-q",
                    *options,
                ],
                env,
            )
            per_process.append(seconds)
            separate += seconds
            print(f"segment {n}: {seconds:.1f} s", file=sys.stderr, flush=True)
        jobs = folder / "jobs.txt"
        jobs.write_text(
            "".join(
                f"{path} --box-ijk {box} -o {folder / f'batch_{n}.nii.gz'} -q\n"
                for n, (path, box) in enumerate(volumes)
            )
        )
        batch = run([*medsegany, "batch", str(jobs), *options], env)
        print(f"batch: {batch:.1f} s", file=sys.stderr, flush=True)
        same = all(
            np.array_equal(
                sitk.GetArrayFromImage(sitk.ReadImage(str(folder / f"one_{n}.nii.gz"))),
                sitk.GetArrayFromImage(sitk.ReadImage(str(folder / f"batch_{n}.nii.gz"))),
            )
            for n in range(args.volumes)
        )
    report.update(
        separate_processes_s=separate,
        separate_process_s=per_process,
        batch_s=batch,
        separate_over_batch=separate / batch,
        same_labels=same,
    )
    _write_json(args.output, report)
    print(
        f"separate {separate:.1f} s, batch {batch:.1f} s: {separate / batch:.2f}x; same labels: {same}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
