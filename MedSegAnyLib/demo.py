"""``make demo``: segment the brain of a real MRI offline with the bundled LiteMedSAM.

The volume is the MNI152 2009a symmetric T1 template (1 mm, 197 x 233 x 189, skull-stripped) that the
PyPI package nilearn ships inside its wheel, so nothing is downloaded. The box is drawn on axial slice
K=90 around the brain; the model segments that slice and propagates up and down until what it found
ends (LiteMedSAM captures part of this smooth template's brain: ~51 slices in bf16, 35 s on a 2-core CPU).

    python -m medsegany.demo --out demo_output
    python -m medsegany.demo --image my_ct.nii.gz --box-ijk 100,80,40,220,200,40 --out demo_output
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

from .errors import MedSegAnyError, VolumeError

MNI_FILE = "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
#: The brain on axial slice K=90 of the template: its extent there is I 28..168, J 30..204 (measured
#: on the file), plus 3 px. (LiteMedSAM misses the thin lateral ventricles of this smooth template.)
BRAIN_BOX_IJK = "25,27,90,171,207,90"


def mni152_t1_path() -> Path:
    """The MNI152 T1 template inside the installed nilearn package (located without importing nilearn)."""
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise VolumeError(
            "the demo volume ships with the package nilearn, which is not installed",
            "run `pip install nilearn` or pass --image YOUR_VOLUME --box-ijk ...",
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / MNI_FILE
    if not path.is_file():
        raise VolumeError(
            f"nilearn is installed but {MNI_FILE} is missing from it",
            "reinstall nilearn or pass --image YOUR_VOLUME --box-ijk ...",
        )
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m medsegany.demo", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--out", default="demo_output", type=Path, help="output folder (default: demo_output)"
    )
    parser.add_argument("--image", help="your own volume instead of the MNI152 template")
    parser.add_argument("--box-ijk", help="box for --image, I0,J0,K0,I1,J1,K1")
    parser.add_argument("--model", default="litemedsam")
    args = parser.parse_args(argv)
    from .cli import main as cli_main

    try:
        if args.image and not args.box_ijk:
            raise MedSegAnyError("--image was given without --box-ijk", "give the box around your object")
        image = args.image or str(mni152_t1_path())
        box = args.box_ijk or BRAIN_BOX_IJK
        args.out.mkdir(parents=True, exist_ok=True)
    except MedSegAnyError as error:
        print(f"medsegany demo: error: {error}", file=sys.stderr)
        return 1
    name = "brain" if not args.image else "segment"
    return cli_main(
        [
            "segment",
            image,
            "--box-ijk",
            box,
            "--model",
            args.model,
            "--name",
            name,
            "-o",
            str(args.out / f"{name}.nii.gz"),
            "-o",
            str(args.out / f"{name}.seg.nrrd"),
            "--preview",
            str(args.out / f"{name}_preview.png"),
            "--overwrite",
        ]
    )


if __name__ == "__main__":
    sys.exit(main())
