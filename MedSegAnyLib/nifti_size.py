"""Whether SimpleITK can read a NIfTI file whole: NIfTI-1 (it cannot read NIfTI-2) holding all the voxel
bytes its header declares (it reads a cut file with zeros)."""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from pathlib import Path

from .errors import VolumeError


def check_nifti_readable(path: Path) -> None:
    """VolumeError when a .nii/.nii.gz file is NIfTI-2 (SimpleITK said "Unable to determine ImageIO
    reader", which read as a broken file) or holds fewer voxel bytes than its header declares (a copy or
    a download cut short): ITK's NIfTI reader fills the missing voxels with zeros without a word."""
    name = path.name.lower()
    if not name.endswith((".nii", ".nii.gz")):
        return
    compressed = name.endswith(".gz")
    try:
        with gzip.open(path, "rb") if compressed else path.open("rb") as stream:
            header = stream.read(540)
        if _header_size(header) == 540:
            raise VolumeError(
                f"{path} is a NIfTI-2 file, which SimpleITK (MedSegAny's reader) cannot read",
                "save it as NIfTI-1 or NRRD (3D Slicer's Save, or nibabel's Nifti1Image)",
            )
        expected = _nifti_file_bytes(header)
        if expected is None:
            return  # not a header we know: SimpleITK tells what is wrong
        if compressed:
            with path.open("rb") as raw:  # a whole gzip member ends with its size (mod 2**32): no need
                raw.seek(-4, os.SEEK_END)  # to inflate it all, except when that disagrees
                if int.from_bytes(raw.read(4), "little") == expected % 2**32:
                    return
            held = _inflated_bytes(path)
        else:
            held = path.stat().st_size
    except (OSError, EOFError, zlib.error):
        return  # an unreadable header: SimpleITK's error names it
    if held < expected:
        raise VolumeError(
            f"{path} is truncated: it holds {held} of the {expected} bytes its header declares",
            "copy or download the file again (the transfer was cut short)",
        )


def _header_size(header: bytes) -> int | None:
    """The header's own size field (348: NIfTI-1, 540: NIfTI-2), in either byte order; None for others."""
    for order in "<>":
        if len(header) >= 4 and struct.unpack(order + "i", header[:4])[0] in (348, 540):
            return struct.unpack(order + "i", header[:4])[0]
    return None


#: Bits per voxel of each NIfTI datatype code: ITK sizes the voxels by the datatype, not by the header's
#: bitpix, which some writers leave wrong (a file was refused as truncated that ITK reads whole).
DATATYPE_BITS = {
    2: 8, 4: 16, 8: 32, 16: 32, 32: 64, 64: 64, 128: 24, 256: 8, 512: 16, 768: 32, 1024: 64, 1280: 64,
    1536: 128, 1792: 128, 2048: 256, 2304: 32,
}


def _nifti_file_bytes(header: bytes) -> int | None:
    """The bytes of a .nii file (its voxels' offset plus their size) from its NIfTI-1 or -2 header."""
    for order in "<>":
        if len(header) >= 348 and struct.unpack(order + "i", header[:4])[0] == 348:
            dims = struct.unpack(order + "8h", header[40:56])
            bitpix = DATATYPE_BITS.get(struct.unpack(order + "h", header[70:72])[0], 0)
            offset = struct.unpack(order + "f", header[108:112])[0]
            if not math.isfinite(offset):  # a damaged header: SimpleITK reads past it or says what is wrong
                return None
            offset = int(offset)
            break
        if len(header) >= 540 and struct.unpack(order + "i", header[:4])[0] == 540:
            bitpix = DATATYPE_BITS.get(struct.unpack(order + "h", header[12:14])[0], 0)
            dims = struct.unpack(order + "8q", header[16:80])
            offset = struct.unpack(order + "q", header[168:176])[0]
            break
    else:
        return None
    if not 1 <= dims[0] <= 7 or bitpix <= 0 or any(size < 1 for size in dims[1 : dims[0] + 1]):
        return None
    return offset + math.prod(dims[1 : dims[0] + 1]) * bitpix // 8


def _inflated_bytes(path: Path) -> int:
    """How many bytes a gzip file (of one member or several) inflates to before it ends or breaks off;
    16 MiB at a time (``gzip`` drops the last block read before a cut)."""
    count = 0
    with path.open("rb") as raw:
        inflater = zlib.decompressobj(wbits=31)
        data = raw.read(1 << 20)
        while data:
            try:
                count += len(inflater.decompress(data, 1 << 24))
            except zlib.error:
                break  # corrupt: what came before is what ITK read
            if inflater.unconsumed_tail:
                data = inflater.unconsumed_tail
            elif inflater.eof:  # the next member, if any
                data = inflater.unused_data or raw.read(1 << 20)
                inflater = zlib.decompressobj(wbits=31)
            else:
                data = raw.read(1 << 20)
    return count
