"""Standard names, colours and codes for segments: a small catalogue in 3D Slicer's terminology format.

A segment made for a structure picked here gets a display name, an RGB colour and a *terminology entry*:
the coded meaning (SNOMED CT, scheme ``SCT``) that Slicer's Segment Editor shows and DICOM SEG export
writes. Slicer keeps it in the segment tag ``TerminologyEntry``
(``vtkSegment::GetTerminologyEntryTagName``) as one string of seven ``~``-separated fields
(``vtkSlicerTerminologiesModuleLogic::SerializeTerminologyEntry`` in Slicer 5.x)::

    context name ~ category ~ type ~ type modifier ~ anatomic context name ~ anatomic region ~ region modifier

where each coded field is ``scheme^value^meaning`` and an absent one is ``^^``. Slicer's own default
segment ("Tissue") reads::

    Segmentation category and type - 3D Slicer General Anatomy list~SCT^85756007^Tissue~SCT^85756007^Tissue
    ~^^~Anatomic codes - DICOM master list~^^~^^            (one line in the tag)

The codes below are SNOMED CT concepts as Slicer's shipped lists use them (same value and meaning, so
Slicer's terminology selector finds each entry in the named context); the colours and the synonyms are
MedSegAny's own. Laterality is a type modifier (``SCT^24028007^Right``, ``SCT^7771000^Left``), as in
Slicer's lists; "liver mass" and "lung nodule" show the optional anatomic region.

>>> entry = lookup("kidney_left")
>>> entry.name, entry.color_rgb
('Left kidney', (185, 102, 83))
>>> text = terminology_entry_string(entry)
>>> text.split("~")[2:4]
['SCT^64033007^Kidney', 'SCT^7771000^Left']
>>> parse_terminology_entry_string(text) == entry
True

Qt-free and Slicer-free: the MRML side (setting the tag on a segment) is :mod:`medsegany.mrml_terminology`.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field

from .errors import PromptError

#: Terminology context names of the lists Slicer 5.x loads by default.
GENERAL_ANATOMY_CONTEXT = "Segmentation category and type - 3D Slicer General Anatomy list"
DICOM_MASTER_CONTEXT = "Segmentation category and type - DICOM master list"
ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"
#: The segment tag Slicer reads the serialized entry from (``vtkSegment::GetTerminologyEntryTagName()``).
TERMINOLOGY_TAG = "TerminologyEntry"

#: Characters that would break the string: field and component separators, and the ``|`` and newline
#: that separate tags in a .seg.nrrd header.
_RESERVED = re.compile(r"[~^|\n\r]")


class TerminologyError(PromptError):
    """A structure name that is not in the catalogue, or a terminology string that cannot be read."""


@dataclass(frozen=True)
class Code:
    """One coded concept: coding scheme designator (``SCT`` = SNOMED CT), code value and meaning."""

    scheme: str
    value: str
    meaning: str

    def __post_init__(self) -> None:
        for part in (self.scheme, self.value, self.meaning):
            if not part or _RESERVED.search(part):
                raise TerminologyError(
                    f"code {self.scheme}^{self.value}^{self.meaning} has an empty part or one of ~ ^ |",
                    "give scheme, value and meaning without those characters",
                )

    def serialized(self) -> str:
        return f"{self.scheme}^{self.value}^{self.meaning}"


@dataclass(frozen=True)
class TerminologyEntry:
    """A structure: display name, colour (RGB 0..255) and its codes in Slicer's terminology model.

    ``color_rgb`` is None for an entry read from a string whose codes are not in the catalogue.
    Equality compares codes and context names only (not the name, colour or synonyms), the way Slicer
    compares terminology entries.
    """

    name: str = field(compare=False)
    category: Code
    type: Code
    color_rgb: tuple[int, int, int] | None = field(default=None, compare=False)
    type_modifier: Code | None = None
    anatomic_region: Code | None = None
    anatomic_region_modifier: Code | None = None
    context_name: str = GENERAL_ANATOMY_CONTEXT
    anatomic_context_name: str = ANATOMIC_CONTEXT
    synonyms: tuple[str, ...] = field(default=(), compare=False)

    @property
    def color_rgb_float(self) -> tuple[float, float, float] | None:
        """The colour as Slicer's segments hold it: each channel 0..1."""
        if self.color_rgb is None:
            return None
        red, green, blue = (channel / 255.0 for channel in self.color_rgb)
        return (red, green, blue)


# --------------------------------------------------------------------------------------------- catalogue

_ANATOMY = Code("SCT", "123037004", "Anatomical Structure")
_TISSUE = Code("SCT", "85756007", "Tissue")
_ALTERED = Code("SCT", "49755003", "Morphologically Altered Structure")
RIGHT = Code("SCT", "24028007", "Right")
LEFT = Code("SCT", "7771000", "Left")


def _entry(category, name, value, meaning, color, *synonyms, modifier=None, region=None, context=None):
    return TerminologyEntry(
        name,
        category,
        Code("SCT", value, meaning),
        color,
        modifier,
        region,
        context_name=context or GENERAL_ANATOMY_CONTEXT,
        synonyms=synonyms,
    )


def _anatomy(*args, **kwargs) -> TerminologyEntry:
    return _entry(_ANATOMY, *args, **kwargs)


def _tissue(*args, **kwargs) -> TerminologyEntry:
    return _entry(_TISSUE, *args, **kwargs)


def _finding(*args, **kwargs) -> TerminologyEntry:
    return _entry(_ALTERED, *args, **kwargs)


def _sided(value, meaning, colors, *synonyms):
    """Right and left entries of a paired organ (laterality as type modifier, as Slicer's lists do)."""
    return tuple(
        _anatomy(
            f"{side.meaning} {meaning.lower()}",
            value,
            meaning,
            color,
            *(f"{side.meaning} {synonym}" for synonym in synonyms),
            modifier=side,
        )
        for side, color in zip((RIGHT, LEFT), colors, strict=True)
    )


_LIVER = Code("SCT", "10200004", "Liver")
_LUNG = Code("SCT", "39607008", "Lung")
_DICOM = DICOM_MASTER_CONTEXT

#: The structures radiologists segment most with promptable models. Colours are MedSegAny's: organ-like
#: hues, left and right of a pair slightly apart so both show in one view.
CATALOGUE: tuple[TerminologyEntry, ...] = (
    _anatomy("Liver", "10200004", "Liver", (196, 98, 67), "hepar", "hepatic"),
    _anatomy("Spleen", "78961009", "Spleen", (150, 95, 170), "splenic"),
    *_sided("64033007", "Kidney", ((205, 120, 96), (185, 102, 83)), "renal"),
    _anatomy("Pancreas", "15776009", "Pancreas", (245, 185, 105), "pancreatic"),
    _anatomy("Gallbladder", "28231008", "Gallbladder", (120, 160, 70), "gall bladder"),
    _anatomy("Stomach", "69695003", "Stomach", (220, 140, 115), "gastric"),
    _anatomy("Aorta", "15825003", "Aorta", (230, 60, 55), "aortic"),
    _anatomy("Inferior vena cava", "64131007", "Inferior vena cava", (40, 110, 210), "ivc", context=_DICOM),
    *_sided("39607008", "Lung", ((180, 210, 240), (150, 190, 230)), "pulmonary"),
    _anatomy("Heart", "80891009", "Heart", (200, 75, 70), "cardiac", "myocardium"),
    _anatomy("Urinary bladder", "89837001", "Bladder", (225, 200, 90), "bladder"),
    _anatomy("Prostate", "41216001", "Prostate", (235, 150, 135), "prostate gland"),
    _anatomy("Brain", "12738006", "Brain", (235, 225, 200), "cerebrum"),
    _anatomy("Brain ventricles", "35764002", "Brain ventricle", (80, 140, 230), "ventricles"),
    _anatomy("Esophagus", "32849002", "Esophagus", (210, 160, 130), "oesophagus"),
    _anatomy("Colon", "71854001", "Colon", (200, 170, 140), "large bowel", "large intestine"),
    _anatomy("Small intestine", "30315005", "Small Intestine", (215, 180, 150), "small bowel", "ileum"),
    *_sided("23451007", "Adrenal gland", ((250, 205, 60), (235, 185, 40)), "adrenal", "suprarenal gland"),
    _anatomy("Vertebra", "51282000", "Vertebra", (240, 225, 175), "vertebrae", context=_DICOM),
    _tissue("Lymph node", "59441001", "Lymph node", (70, 175, 100), "node", "ln"),
    _tissue("Bone", "272673000", "Bone", (245, 235, 200), "skeleton", "osseous"),
    _tissue("Muscle", "71616004", "Muscle", (180, 80, 70), "skeletal muscle"),
    _finding("Mass", "4147007", "Mass", (120, 230, 120), "tumor", "tumour"),
    _finding("Liver mass", "4147007", "Mass", (60, 200, 90), "liver tumor", "liver tumour", region=_LIVER),
    # "Lesion" (SCT 52988006) is a SNOMED CT morphologic abnormality that Slicer's shipped lists lack:
    # Slicer shows its codes and DICOM SEG exports them, but its selector lists it under no context.
    _finding("Lesion", "52988006", "Lesion", (255, 120, 40), "lesions", context=_DICOM),
    _finding("Nodule", "27925004", "Nodule", (255, 170, 60), "nodules", context=_DICOM),
    _finding(
        "Lung nodule", "27925004", "Nodule", (255, 215, 80), "pulmonary nodule", region=_LUNG, context=_DICOM
    ),
    _finding("Cyst", "367643001", "Cyst", (205, 205, 100), "cystic lesion"),
)


# ------------------------------------------------------------------------------------------------ lookup

#: Words a side can be written as: "L kidney", "kidney_lt", "kidney (right)".
_SIDE_WORDS = {"l": "left", "lt": "left", "r": "right", "rt": "right"}


def _key(text: str) -> str:
    """Case, spacing, punctuation and word order do not matter: "Kidney_Left" == "left  kidney"."""
    words = re.findall(r"[a-z0-9]+", str(text).lower())
    words = [_SIDE_WORDS.get(word, word) for word in words if word != "the"]
    return " ".join(sorted(words))


def _index() -> dict[str, TerminologyEntry]:
    index: dict[str, TerminologyEntry] = {}
    for entry in CATALOGUE:
        for alias in (entry.name, *entry.synonyms):
            index.setdefault(_key(alias), entry)
    return index


_INDEX = _index()


def structure_names() -> list[str]:
    """Display names of the catalogue, in catalogue order (what the Slicer panel lists)."""
    return [entry.name for entry in CATALOGUE]


def lookup(name: str) -> TerminologyEntry:
    """The catalogue entry for a structure name or synonym, ignoring case, spaces, ``_``/``-`` and order.

    Raises :class:`TerminologyError` naming up to three close matches when ``name`` is unknown (an
    unpaired "kidney" asks for a side).
    """
    key = _key(name)
    entry = _INDEX.get(key)
    if entry is not None:
        return entry
    close = difflib.get_close_matches(key, list(_INDEX), n=6, cutoff=0.6)
    sided = [alias for alias in _INDEX if alias.split() == sorted([*key.split(), "left"])]
    sided += [alias for alias in _INDEX if alias.split() == sorted([*key.split(), "right"])]
    suggestions = list(dict.fromkeys(_INDEX[alias].name for alias in sided + close))[:3]
    listed = f"the {len(CATALOGUE)} known structures are listed by medsegany.terminology.structure_names()"
    fix = (
        f"did you mean {' or '.join(repr(s) for s in suggestions)}? ({listed})"
        if suggestions
        else f"leave the structure empty for a plain segment, or pick a listed one ({listed})"
    )
    raise TerminologyError(f"structure {name!r} is not in MedSegAny's terminology catalogue", fix)


def find_by_codes(entry: TerminologyEntry) -> TerminologyEntry | None:
    """The catalogue entry with the same codes and contexts as ``entry``, or None."""
    return next((known for known in CATALOGUE if known == entry), None)


# ------------------------------------------------------------------------------------------ (de)serialize


def _field(code: Code | None) -> str:
    return "^^" if code is None else code.serialized()


def terminology_entry_string(entry: TerminologyEntry) -> str:
    """The serialized entry Slicer 5.x stores in a segment's ``TerminologyEntry`` tag (7 ``~`` fields)."""
    for context in (entry.context_name, entry.anatomic_context_name):
        if _RESERVED.search(context):
            raise TerminologyError(f"context name {context!r} has one of ~ ^ |", "rename the context")
    region_modifier = entry.anatomic_region_modifier if entry.anatomic_region is not None else None
    return "~".join(
        (
            entry.context_name,
            _field(entry.category),
            _field(entry.type),
            _field(entry.type_modifier),
            entry.anatomic_context_name,
            _field(entry.anatomic_region),
            _field(region_modifier),
        )
    )


def _parse_code(text: str, what: str, required: bool) -> Code | None:
    parts = text.split("^")
    if len(parts) != 3:
        raise TerminologyError(
            f"the {what} field {text!r} of the terminology entry is not scheme^value^meaning",
            "store the entry as Slicer writes it",
        )
    if not any(parts):
        if required:
            raise TerminologyError(
                f"the terminology entry has no {what}",
                "pick a category and type (Segment Editor: double-click the segment's colour)",
            )
        return None
    return Code(*parts)


def _generated_name(entry: TerminologyEntry) -> str:
    """A readable name from the meanings: "Right Kidney", "Mass in Liver"."""
    name = entry.type.meaning
    if entry.type_modifier is not None:
        name = f"{entry.type_modifier.meaning} {name}"
    if entry.anatomic_region is not None:
        region = entry.anatomic_region.meaning
        if entry.anatomic_region_modifier is not None:
            region = f"{entry.anatomic_region_modifier.meaning} {region}"
        name = f"{name} in {region}"
    return name


def parse_terminology_entry_string(text: str) -> TerminologyEntry:
    """Read a serialized terminology entry (the reverse of :func:`terminology_entry_string`).

    When the codes are those of a catalogue entry that entry is returned (with its name and colour);
    otherwise the name is made from the meanings ("Right Kidney") and the colour is None.
    """
    fields = str(text).split("~")
    if len(fields) != 7:
        raise TerminologyError(
            f"terminology entry {text!r} has {len(fields)} '~'-separated fields, not 7",
            "store the entry as Slicer 5.x writes it (context~category~type~modifier~anatomic context~"
            "region~region modifier)",
        )
    context, category, type_, modifier, anatomic_context, region, region_modifier = fields
    parsed_region = _parse_code(region, "anatomic region", required=False)
    entry = TerminologyEntry(
        "",
        _parse_code(category, "category", required=True),
        _parse_code(type_, "type", required=True),
        None,
        _parse_code(modifier, "type modifier", required=False),
        parsed_region,
        _parse_code(region_modifier, "anatomic region modifier", required=False) if parsed_region else None,
        context,
        anatomic_context,
    )
    known = find_by_codes(entry)
    if known is not None:
        return known
    return TerminologyEntry(
        _generated_name(entry),
        entry.category,
        entry.type,
        None,
        entry.type_modifier,
        entry.anatomic_region,
        entry.anatomic_region_modifier,
        entry.context_name,
        entry.anatomic_context_name,
    )


def resolve_structure(structure: str | TerminologyEntry | None) -> TerminologyEntry | None:
    """A catalogue entry from a name, an entry as is, None for None or a blank name (no terminology)."""
    if structure is None or isinstance(structure, TerminologyEntry):
        return structure
    if not str(structure).strip():
        return None
    return lookup(structure)
