"""Prompt files (JSON) and the command line's --box / --point arguments.

A prompt file names the objects to segment and their prompts, in IJK voxel indices and/or RAS mm::

    {"objects": [
        {"name": "liver",
         "boxes_ijk": [[40, 60, 30, 120, 140, 30]],
         "points_ijk": [[80, 100, 30, 1], [70, 90, 30, 0]],
         "boxes_ras": [[x0, y0, z0, x1, y1, z1]],
         "points_ras": [[x, y, z, 1]],
         "markups": ["liver_box.mrk.json", "liver_outside.mrk.json:-"]}
    ]}

Each box is two opposite corners on one slice. A point's fourth number is its label (1 inside, 0 outside;
1 when left out). ``markups`` lists 3D Slicer markups files (``.mrk.json``, relative to the prompt file's
folder; see :mod:`medsegany.markups_file`): their ROIs are boxes, their placed points positive clicks, or
negative ones with ``:-`` after the name. Points join the box on their slice (same axis and index); points
on a slice without a box form a prompt of their own on the axis of the object's boxes (K if it has none).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import PromptError
from .prompts import (
    AXIS_NAMES,
    Box6,
    MaskPrompt,
    Point3,
    SlicePrompts,
    box_ijk_from_ras,
    make_slice_prompts,
    point_ijk_from_ras,
    snap_index,
)

if TYPE_CHECKING:
    from .volume import Volume

OBJECT_FIELDS = ("name", "boxes_ijk", "points_ijk", "boxes_ras", "points_ras", "markups")
#: Keys that may appear beside the prompts without meaning anything to the loader.
COMMENT_FIELDS = ("comment", "description", "version")
#: Without a box, point-only prompts are on axial (K) slices, the usual view for CT and MR.
DEFAULT_AXIS = 2


@dataclass(frozen=True)
class ObjectPrompts:
    """One named object and its prompts, one :class:`SlicePrompts` (or
    :class:`~medsegany.prompts.MaskPrompt`) per prompted slice. ``label_value``: the value the object
    has in the outputs when it must keep one (an input labelmap's); None: its place in the list."""

    name: str
    prompts: tuple[SlicePrompts | MaskPrompt, ...]
    label_value: int | None = None


def _is_number(value) -> bool:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer of hundreds of digits
        return False


def _entries(obj: dict, field: str, where: str) -> list:
    entries = obj.get(field, [])
    if not isinstance(entries, list):
        example = '["liver_box.mrk.json"]' if field == "markups" else "[[...], ...]"  # file names, not lists
        raise PromptError(f"{where}: {field} is not a list", f'write "{field}": {example}')
    return entries


def _box_entry(entry, where: str) -> tuple[float, ...]:
    if not isinstance(entry, list) or len(entry) != 6 or not all(_is_number(v) for v in entry):
        count = len(entry) if isinstance(entry, list) else "no"
        raise PromptError(
            f"{where} is {json.dumps(entry)[:60]} ({count} values), a box needs 6 numbers",
            "give two opposite corners: [i0, j0, k0, i1, j1, k1] (or x, y, z in mm for *_ras)",
        )
    return tuple(float(v) for v in entry)


def _point_entry(entry, where: str) -> tuple[Point3, int]:
    if not isinstance(entry, list) or len(entry) not in (3, 4) or not all(_is_number(v) for v in entry[:3]):
        raise PromptError(
            f"{where} is {json.dumps(entry)[:60]}, a point needs 3 numbers and an optional label",
            "give [i, j, k, 1] for inside or [i, j, k, 0] for outside (x, y, z in mm for *_ras)",
        )
    label = entry[3] if len(entry) == 4 else 1
    if not isinstance(label, (int, float)) or label not in (0, 1):  # true/false count as 1/0
        raise PromptError(
            f"{where} has label {json.dumps(label)}", "use 1 for inside the object, 0 for outside"
        )
    return (float(entry[0]), float(entry[1]), float(entry[2])), int(label)


def _object_prompts(obj, index: int, volume: Volume, folder: Path) -> ObjectPrompts:
    if not isinstance(obj, dict):
        raise PromptError(f"objects[{index}] is not a JSON object", 'write {"name": ..., "boxes_ijk": [...]}')
    name = obj.get("name")
    if name is not None and not isinstance(name, str):  # "has no name" would send the user to add one
        raise PromptError(
            f"objects[{index}] has the name {json.dumps(name)[:60]}, which is not text",
            'write it as text in quotes, e.g. "name": "liver"',
        )
    if name is None or not name.strip():
        what = "no name" if name is None else "an empty name"
        raise PromptError(f"objects[{index}] has {what}", 'add "name": "liver" (any non-empty text)')
    where = f"object {name!r}"
    unknown = sorted(set(obj) - set(OBJECT_FIELDS) - set(COMMENT_FIELDS))
    if unknown:
        raise PromptError(f"{where}: unknown field {unknown[0]!r}", f"use only {', '.join(OBJECT_FIELDS)}")

    # each prompt keeps the name of its entry in the file, for the errors: a count over boxes_ijk and
    # boxes_ras together (or over one slice's points) would name another entry than the one at fault
    boxes: list[Box6] = []
    box_fields: list[str] = []
    for n, entry in enumerate(_entries(obj, "boxes_ijk", where)):
        boxes.append(_box_entry(entry, f"{where} boxes_ijk[{n}]"))
        box_fields.append(f"boxes_ijk[{n}]")
    for n, entry in enumerate(_entries(obj, "boxes_ras", where)):
        corners = _box_entry(entry, f"{where} boxes_ras[{n}]")
        try:
            boxes.append(box_ijk_from_ras(volume, corners[:3], corners[3:]))
        except PromptError as error:
            raise PromptError(f"{where} boxes_ras[{n}]: {error.problem}", error.fix) from None
        box_fields.append(f"boxes_ras[{n}]")
    points: list[tuple[Point3, int, str]] = []
    for n, entry in enumerate(_entries(obj, "points_ijk", where)):
        point, label = _point_entry(entry, f"{where} points_ijk[{n}]")
        points.append((point, label, f"points_ijk[{n}]"))
    for n, entry in enumerate(_entries(obj, "points_ras", where)):
        point_ras, label = _point_entry(entry, f"{where} points_ras[{n}]")
        points.append((point_ijk_from_ras(volume, point_ras), label, f"points_ras[{n}]"))
    for n, entry in enumerate(_entries(obj, "markups", where)):
        _add_markups_entry(entry, f"markups[{n}]", where, folder, volume, boxes, box_fields, points)
    if not boxes and not points:
        raise PromptError(
            f"{where} has no prompts", "give boxes_ijk, points_ijk, boxes_ras, points_ras or markups"
        )

    # Check each box alone first: its axis and slice decide which points join it.
    box_prompts: list[SlicePrompts] = []
    for box, field in zip(boxes, box_fields, strict=True):
        try:
            box_prompts.append(make_slice_prompts(volume, box_ijk=box))
        except PromptError as error:
            raise PromptError(f"{where} {field}: {error.problem}", error.fix) from None
    slices = [(p.axis, p.slice_index) for p in box_prompts]
    for n, key in enumerate(slices):
        if slices.index(key) != n:
            raise PromptError(
                f"{where} has two boxes on slice {AXIS_NAMES[key[0]]}={key[1]}",
                "give one box per object per slice (split the object or drop one box)",
            )
    box_axes = sorted({axis for axis, _ in slices})

    groups: dict[tuple[int, int], list[tuple[Point3, int, str]]] = {key: [] for key in slices}
    for point, label, field in points:
        hosts = [key for key in slices if snap_index(point[key[0]]) == key[1]]
        if len(hosts) > 1:
            raise PromptError(
                f"{where} {field} lies on the slices of two boxes "
                f"({', '.join(f'{AXIS_NAMES[a]}={s}' for a, s in hosts)})",
                "move the point or give the boxes on one axis",
            )
        if hosts:
            key = hosts[0]
        else:
            if len(box_axes) > 1:
                raise PromptError(
                    f"{where} {field} is on no box's slice and the boxes are on several axes",
                    "put the point on a box's slice",
                )
            axis = box_axes[0] if box_axes else DEFAULT_AXIS
            key = (axis, snap_index(point[axis]))
        groups.setdefault(key, []).append((point, label, field))

    boxes_by_slice = dict(zip(slices, boxes, strict=True))
    prompts: list[SlicePrompts] = []
    for key in sorted(groups):
        group = groups[key]
        try:
            prompts.append(
                make_slice_prompts(
                    volume,
                    box_ijk=boxes_by_slice.get(key),
                    points_ijk=[point for point, _, _ in group],
                    point_labels=[label for _, label, _ in group],
                    axis=key[0],
                )
            )
        except PromptError as error:
            _raise_for_the_point_at_fault(volume, where, key[0], group)
            raise PromptError(
                f"{where} slice {AXIS_NAMES[key[0]]}={key[1]}: {error.problem}", error.fix
            ) from None
    return ObjectPrompts(name.strip(), tuple(prompts))


def _add_markups_entry(
    entry: object,
    field: str,
    where: str,
    folder: Path,
    volume: Volume,
    boxes: list[Box6],
    box_fields: list[str],
    points: list[tuple[Point3, int, str]],
) -> None:
    """A ``markups`` entry: a Slicer ``.mrk.json`` file (relative to the prompt file's folder; ``:-`` after
    the name makes its points negative). Its ROIs join ``boxes``, its placed points ``points``."""
    from .markups_file import read_markups_file
    from .prompts import box_ijk_from_corners_ras

    if not isinstance(entry, str) or not entry.strip():
        raise PromptError(f"{where} {field} is not a file name", 'write "markups": ["liver_box.mrk.json"]')
    negative = entry.endswith(":-")
    name = entry[:-2] if negative else entry
    try:
        content = read_markups_file(folder / Path(name).expanduser())
    except PromptError as error:
        raise PromptError(f"{where} {field}: {error.problem}", error.fix) from None
    for n, corners_ras in enumerate(content.rois_corners_ras):
        if negative:
            raise PromptError(f"{where} {field} holds an ROI and is marked negative (':-')", "drop the ':-'")
        try:
            boxes.append(box_ijk_from_corners_ras(volume, corners_ras, f"its ROI {n}"))
        except PromptError as error:
            raise PromptError(f"{where} {field} ({name}): {error.problem}", error.fix) from None
        box_fields.append(f"{field} ROI {n}")
    for point_ras, point_name in zip(content.points_ras, content.point_names, strict=True):
        point_field = f"{field} ({name}) {point_name}"  # the file's own label and position of the point
        points.append((point_ijk_from_ras(volume, point_ras), 0 if negative else 1, point_field))


class _RepeatedKeyError(ValueError):
    """A key given twice in one JSON object of a prompt file; ``owner`` names the object it is in."""

    def __init__(self, key: str, pairs: list[tuple[str, object]]) -> None:
        super().__init__(key)
        self.key = key
        names = [value for name, value in pairs if name == "name" and isinstance(value, str)]
        self.owner = f" (object {names[-1]!r})" if names and key != "name" else ""


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    """json's object hook that refuses a key given twice: json.loads keeps the last one alone, so a second
    "boxes_ijk" (or "objects") line would drop the first one's prompts (or objects) without a word."""
    keys = [key for key, _ in pairs]
    for n, key in enumerate(keys):
        if keys.index(key) != n:
            raise _RepeatedKeyError(key, pairs)
    return dict(pairs)


def _raise_for_the_point_at_fault(
    volume: Volume, where: str, axis: int, group: list[tuple[Point3, int, str]]
) -> None:
    """PromptError naming the entry of the first point of a slice that is bad alone (outside the volume);
    nothing when each is good alone (the fault is the slice's prompt as a whole, e.g. only negatives)."""
    for point, _, field in group:
        try:
            make_slice_prompts(volume, points_ijk=[point], axis=axis)
        except PromptError as error:
            # make_slice_prompts numbers it "point 0", its place in a one-point prompt
            problem = error.problem.removeprefix("point 0 ")
            raise PromptError(f"{where} {field} {problem}", error.fix) from None


def load_prompt_file(path: str | Path, volume: Volume) -> list[ObjectPrompts]:
    """Read a prompt file and check every prompt against ``volume``; objects keep the file's order."""
    path = Path(path).expanduser()
    try:
        # utf-8-sig: Windows editors (Notepad, PowerShell 5's Out-File) start UTF-8 with a byte-order mark,
        # which json.loads refuses as "not valid JSON" although the JSON is
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise PromptError(f"prompt file {path} does not exist", "check the path") from None
    except (OSError, UnicodeDecodeError) as error:
        raise PromptError(f"prompt file {path} cannot be read ({error})", "give a UTF-8 JSON file") from None
    try:
        document = json.loads(text, object_pairs_hook=_unique_keys)
    except _RepeatedKeyError as error:
        raise PromptError(
            f'prompt file {path} gives "{error.key}" twice in one JSON object{error.owner}, '
            "and JSON would keep only the last",
            f'write "{error.key}" once there'
            + (", with all its entries in one list" if error.key in ("objects", *OBJECT_FIELDS[1:]) else ""),
        ) from None
    except ValueError as error:  # JSONDecodeError, or an integer of over 4300 digits
        if not isinstance(error, json.JSONDecodeError):
            raise PromptError(f"prompt file {path} is not valid JSON ({error})", "fix the number") from None
        raise PromptError(
            f"prompt file {path} is not valid JSON "
            f"({error.msg} at line {error.lineno}, column {error.colno})",
            "fix the JSON (a validator or `python -m json.tool FILE` shows where)",
        ) from None
    if not isinstance(document, dict) or "objects" not in document:
        raise PromptError(f'prompt file {path} has no "objects" list', 'write {"objects": [{"name": ...}]}')
    unknown = sorted(set(document) - {"objects", *COMMENT_FIELDS})
    if unknown:
        raise PromptError(
            f"prompt file {path} has an unknown top-level field {unknown[0]!r}", 'keep only "objects"'
        )
    objects = document["objects"]
    if not isinstance(objects, list) or not objects:
        raise PromptError(
            f'prompt file {path}: "objects" is not a non-empty list', "list at least one object"
        )
    result = [_object_prompts(obj, n, volume, path.parent) for n, obj in enumerate(objects)]
    names = [o.name for o in result]
    for n, name in enumerate(names):
        if names.index(name) != n:
            raise PromptError(
                f"prompt file {path} names object {name!r} twice", "give each object a unique name"
            )
    return result


def _parse_numbers(text: str, count: int, what: str, example: str) -> tuple[float, ...]:
    parts = [part.strip() for part in str(text).split(",")]
    if len(parts) != count or not all(parts):
        raise PromptError(
            f"{what} {text!r} has {len(parts)} values, it needs {count}", f"write e.g. {example}"
        )
    try:
        numbers = tuple(float(part) for part in parts)
    except ValueError:
        raise PromptError(
            f"{what} {text!r} contains something that is not a number", f"write e.g. {example}"
        ) from None
    if not all(math.isfinite(n) for n in numbers):
        raise PromptError(f"{what} {text!r} contains NaN or infinity", f"write e.g. {example}")
    return numbers


def parse_box_arg(text: str) -> Box6:
    """Parse ``--box I0,J0,K0,I1,J1,K1`` (two opposite corners in voxel indices)."""
    return _parse_numbers(text, 6, "box", "--box 40,60,30,120,140,30")


def parse_point_arg(text: str) -> tuple[Point3, int]:
    """Parse ``--point I,J,K`` (inside), ``I,J,K:+`` (inside) or ``I,J,K:-`` (outside) -> (point, label)."""
    body, label = str(text).strip(), 1
    if ":" in body:
        body, _, sign = body.rpartition(":")
        if sign.strip() not in ("+", "-"):
            raise PromptError(
                f"point {text!r} ends in {':' + sign!r}",
                "end it with :+ (inside) or :- (outside), or nothing",
            )
        label = 1 if sign.strip() == "+" else 0
    numbers = _parse_numbers(body, 3, "point", "--point 80,100,30 or --point 70,90,30:-")
    return (numbers[0], numbers[1], numbers[2]), label


def describe(objects: Sequence[ObjectPrompts]) -> str:
    """One line per object: its name and prompted slices, for logs and the CLI."""
    lines = []
    for obj in objects:
        slices = ", ".join(
            f"{p.axis_name}={p.slice_index}"
            + (" mask" if isinstance(p, MaskPrompt) else "")
            + (" box" if p.box_ijk else "")
            + (f" {len(p.points_ijk)} pts" if p.points_ijk else "")
            for p in obj.prompts
        )
        lines.append(f"{obj.name}: {slices}")
    return "\n".join(lines)
