"""The structure catalogue and Slicer's serialized terminology entry (``TerminologyEntry`` segment tag).

Oracles: Slicer's own (de)serializer from ``slicer-core`` (``vtkSlicerTerminologiesModuleLogic``), the
string Slicer puts on every new segment (``vtkSegment``'s constructor, Slicer 5.x), ``slicerio``'s reader,
and the SNOMED CT identifier rules (partition digits and Verhoeff check digit) for every code.
"""

from __future__ import annotations

import pytest
from medsegany.errors import MedSegAnyError, PromptError
from medsegany.terminology import (
    ANATOMIC_CONTEXT,
    CATALOGUE,
    DICOM_MASTER_CONTEXT,
    GENERAL_ANATOMY_CONTEXT,
    Code,
    TerminologyEntry,
    TerminologyError,
    lookup,
    parse_terminology_entry_string,
    resolve_structure,
    structure_names,
    terminology_entry_string,
)

#: What Slicer 5.x stores on a fresh segment (vtkSegment::vtkSegment), character for character.
SLICER_DEFAULT_TISSUE = (
    "Segmentation category and type - 3D Slicer General Anatomy list~SCT^85756007^Tissue~SCT^85756007^Tissue"
    "~^^~Anatomic codes - DICOM master list~^^~^^"
)
TISSUE = Code("SCT", "85756007", "Tissue")


def _codes(entry: TerminologyEntry) -> list[Code]:
    optional = (entry.type_modifier, entry.anatomic_region, entry.anatomic_region_modifier)
    return [entry.category, entry.type, *(code for code in optional if code is not None)]


# ------------------------------------------------------------------------------------------------ format


def test_slicers_default_segment_entry_is_written_and_read_exactly():
    tissue = TerminologyEntry("Tissue", TISSUE, TISSUE)
    assert terminology_entry_string(tissue) == SLICER_DEFAULT_TISSUE
    parsed = parse_terminology_entry_string(SLICER_DEFAULT_TISSUE)
    assert parsed == tissue
    assert (parsed.name, parsed.color_rgb) == ("Tissue", None)  # not in the catalogue: no colour of ours


@pytest.mark.parametrize("entry", CATALOGUE, ids=lambda entry: entry.name)
def test_every_entry_round_trips_to_itself(entry):
    text = terminology_entry_string(entry)
    fields = text.split("~")
    assert len(fields) == 7
    assert fields[0] == entry.context_name and fields[4] == entry.anatomic_context_name
    assert fields[2] == f"{entry.type.scheme}^{entry.type.value}^{entry.type.meaning}"
    parsed = parse_terminology_entry_string(text)
    assert parsed is entry  # the catalogue entry itself, with its name and colour


def test_laterality_and_region_fields():
    left = terminology_entry_string(lookup("left kidney")).split("~")
    assert left[3] == "SCT^7771000^Left" and left[5:] == ["^^", "^^"]
    liver_mass = terminology_entry_string(lookup("liver mass")).split("~")
    assert liver_mass[2:4] == ["SCT^4147007^Mass", "^^"]
    assert liver_mass[5:] == ["SCT^10200004^Liver", "^^"]


def test_unknown_codes_get_a_name_from_their_meanings():
    text = (
        f"{GENERAL_ANATOMY_CONTEXT}~SCT^123037004^Anatomical Structure~SCT^71341001^Bone of femur"
        f"~SCT^24028007^Right~{ANATOMIC_CONTEXT}~SCT^39607008^Lung~SCT^7771000^Left"
    )
    entry = parse_terminology_entry_string(text)
    assert entry.name == "Right Bone of femur in Left Lung"
    assert entry.color_rgb is None and entry.color_rgb_float is None
    assert terminology_entry_string(entry) == text


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("Liver", "1 '~'-separated fields, not 7"),
        (SLICER_DEFAULT_TISSUE + "~", "8 '~'-separated fields"),
        (SLICER_DEFAULT_TISSUE.replace("SCT^85756007^Tissue~SCT", "^^~SCT", 1), "no category"),
        (SLICER_DEFAULT_TISSUE.replace("~SCT^85756007^Tissue~^^", "~^^~^^", 1), "no type"),
        (
            SLICER_DEFAULT_TISSUE.replace("SCT^85756007^Tissue", "SCT^85756007", 1),
            r"not scheme\^value",
        ),
        (SLICER_DEFAULT_TISSUE.replace("SCT^85756007^Tissue", "SCT^^Tissue", 1), "empty part"),
    ],
)
def test_unreadable_strings_are_refused_in_one_line(text, fragment):
    with pytest.raises(TerminologyError, match=fragment) as caught:
        parse_terminology_entry_string(text)
    assert "\n" not in str(caught.value)


def test_codes_refuse_separator_characters():
    for meaning in ("Mass~1", "a^b", "x|y", ""):
        with pytest.raises(TerminologyError, match="~ \\^ \\|"):
            Code("SCT", "4147007", meaning)


def test_slicers_own_deserializer_reads_every_entry_and_writes_it_back():
    slicer = pytest.importorskip("slicer", reason="needs slicer-core for Slicer's own terminology logic")
    if not hasattr(slicer, "vtkSlicerTerminologiesModuleLogic"):
        pytest.skip("this slicer-core has no terminology logic")
    logic = slicer.vtkSlicerTerminologiesModuleLogic
    for entry in CATALOGUE:
        text = terminology_entry_string(entry)
        read = slicer.vtkSlicerTerminologyEntry()
        assert logic.DeserializeTerminologyEntry(text, read), entry.name
        assert read.GetTerminologyContextName() == entry.context_name
        assert read.GetTypeObject().GetCodeValue() == entry.type.value
        assert read.GetCategoryObject().GetCodeMeaning() == entry.category.meaning
        modifier = read.GetTypeModifierObject().GetCodeValue() or None
        assert modifier == (entry.type_modifier.value if entry.type_modifier else None)
        region = read.GetRegionObject().GetCodeValue() or None
        assert region == (entry.anatomic_region.value if entry.anatomic_region else None)
        assert logic.SerializeTerminologyEntry(read) == text


def test_slicerio_reads_the_same_codes():
    slicerio_segmentation = pytest.importorskip("slicerio.segmentation")
    for entry in CATALOGUE:
        read = slicerio_segmentation.terminology_entry_from_string(terminology_entry_string(entry))
        assert read["contextName"] == entry.context_name
        assert read["category"] == [entry.category.scheme, entry.category.value, entry.category.meaning]
        assert read["type"] == [entry.type.scheme, entry.type.value, entry.type.meaning]
        assert ("anatomicRegion" in read) == (entry.anatomic_region is not None)


# ------------------------------------------------------------------------------------------------ lookup


@pytest.mark.parametrize(
    ("typed", "name"),
    [
        ("  LIVER ", "Liver"),
        ("kidney_left", "Left kidney"),
        ("Kidney (Left)", "Left kidney"),
        ("L kidney", "Left kidney"),
        ("right-lung", "Right lung"),
        ("lung_rt", "Right lung"),
        ("IVC", "Inferior vena cava"),
        ("small_bowel", "Small intestine"),
        ("tumour", "Mass"),
        ("Tumor", "Mass"),
        ("bladder", "Urinary bladder"),
        ("adrenal_gland_right", "Right adrenal gland"),
        ("the brain", "Brain"),
        ("Lung nodule", "Lung nodule"),
    ],
)
def test_lookup_ignores_case_spacing_order_and_knows_synonyms(typed, name):
    assert lookup(typed).name == name


def test_every_name_and_synonym_finds_its_own_entry():
    for entry in CATALOGUE:
        for alias in (entry.name, *entry.synonyms):
            assert lookup(alias) is entry, alias


@pytest.mark.parametrize(
    ("typed", "suggested"),
    [
        ("livr", ["'Liver'"]),
        ("kidney", ["'Right kidney'", "'Left kidney'"]),
        ("adrenal glands", ["'Right adrenal gland'", "'Left adrenal gland'"]),
        ("pancreatic duct", ["'Pancreas'"]),
    ],
)
def test_unknown_names_suggest_near_matches(typed, suggested):
    with pytest.raises(TerminologyError) as caught:
        lookup(typed)
    error = caught.value
    assert isinstance(error, PromptError) and isinstance(error, MedSegAnyError)
    assert repr(typed) in error.problem and "did you mean" in error.fix
    for suggestion in suggested:
        assert suggestion in error.fix
    assert "\n" not in str(error)


def test_a_name_far_from_everything_says_how_to_go_on():
    with pytest.raises(TerminologyError, match="leave the structure empty") as caught:
        lookup("xyzzy")
    assert "did you mean" not in str(caught.value)


def test_resolve_structure():
    liver = lookup("liver")
    assert resolve_structure(None) is None
    assert resolve_structure("   ") is None
    assert resolve_structure(liver) is liver
    assert resolve_structure("Liver") is liver
    with pytest.raises(TerminologyError):
        resolve_structure("livr")


# ------------------------------------------------------------------------------------------------ catalogue


#: Verhoeff's tables: multiplication in the dihedral group D5 and the position permutation.
_D5 = (
    (0, 1, 2, 3, 4, 5, 6, 7, 8, 9),
    (1, 2, 3, 4, 0, 6, 7, 8, 9, 5),
    (2, 3, 4, 0, 1, 7, 8, 9, 5, 6),
    (3, 4, 0, 1, 2, 8, 9, 5, 6, 7),
    (4, 0, 1, 2, 3, 9, 5, 6, 7, 8),
    (5, 9, 8, 7, 6, 0, 4, 3, 2, 1),
    (6, 5, 9, 8, 7, 1, 0, 4, 3, 2),
    (7, 6, 5, 9, 8, 2, 1, 0, 4, 3),
    (8, 7, 6, 5, 9, 3, 2, 1, 0, 4),
    (9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
)
_PERMUTATION = (1, 5, 7, 6, 2, 8, 3, 0, 9, 4)


def _verhoeff_valid(number: str) -> bool:
    """The Verhoeff check digit every SNOMED CT identifier ends with."""
    check = 0
    for position, digit in enumerate(reversed(number)):
        permuted = int(digit)
        for _ in range(position % 8):
            permuted = _PERMUTATION[permuted]
        check = _D5[check][permuted]
    return check == 0


def test_verhoeff_check_rejects_a_typo():
    assert _verhoeff_valid("10200004")  # Liver
    assert not _verhoeff_valid("10200005")
    assert not _verhoeff_valid("12000004")  # two digits swapped


def test_catalogue_codes_are_valid_snomed_ct_concept_ids():
    for entry in CATALOGUE:
        for code in _codes(entry):
            assert code.scheme == "SCT", entry.name
            assert code.value.isdigit() and 6 <= len(code.value) <= 18, (entry.name, code)
            assert code.value[-3:-1] == "00", (entry.name, code)  # partition: a concept, short format
            assert _verhoeff_valid(code.value), (entry.name, code)
        assert entry.context_name in (GENERAL_ANATOMY_CONTEXT, DICOM_MASTER_CONTEXT)
        assert entry.anatomic_context_name == ANATOMIC_CONTEXT


def test_catalogue_names_colours_and_size():
    names = structure_names()
    assert names == [entry.name for entry in CATALOGUE]
    assert len(set(name.lower() for name in names)) == len(names) >= 25
    colors = [entry.color_rgb for entry in CATALOGUE]
    for entry, color in zip(CATALOGUE, colors, strict=True):
        assert len(color) == 3 and all(isinstance(c, int) and 0 <= c <= 255 for c in color), entry.name
        assert all(0.0 <= c <= 1.0 for c in entry.color_rgb_float)
        assert entry.color_rgb_float == pytest.approx([c / 255 for c in color])
    assert len(set(colors)) == len(colors), "two structures share a colour"
    sides = {entry.name: entry for entry in CATALOGUE if entry.type_modifier is not None}
    assert sides and all(("Left " + name[6:]) in sides for name in sides if name.startswith("Right "))
