"""``medsegany segment --estimate``: the memory by part and the plan, before anything runs or is written;
catalog sizes for a model not downloaded yet; exit code 1 when it cannot fit."""

from __future__ import annotations

import pytest

pytest.importorskip("SimpleITK")

from test_cli import assert_one_line_error, run_cli, write_phantom


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    return write_phantom(tmp_path_factory.mktemp("estimate") / "phantom.nii.gz")


def test_estimate_prints_the_memory_by_part_and_the_plan_and_writes_nothing(
    phantom, tmp_path, capsys, monkeypatch
):
    from medsegany.models import registry

    loaded, real = [], registry.load_model
    monkeypatch.setattr(registry, "load_model", lambda *a, **k: loaded.append(k) or real(*a, **k))
    existing = tmp_path / "kept.nii.gz"
    existing.write_bytes(b"the user's file")
    code, out, err = run_cli(
        capsys, "segment", phantom, "--box-ijk", "14,20,2,46,44,2", "--device", "cpu", "--estimate"
    )
    assert code == 0, err
    first, parts = out.splitlines()[:2]
    assert "litemedsam on 5 slices of 64x64 with 1 object(s) needs about" in first
    assert "plan: encoder batch 1, 5 slices of features cached" in first
    assert parts.startswith("  memory ") and "weights " in parts and "features " in parts
    assert "cuda_overhead" not in parts  # parts of nothing are left out
    # sized as the run loads it: one segment run (a float32 encoder would not be compiled for it)
    assert [call["single_run"] for call in loaded] == [True]
    # an output named with --estimate is neither refused for existing nor touched
    code, _, err = run_cli(
        capsys, "segment", phantom, "--box-ijk", "14,20,2,46,44,2", "--estimate", "-o", existing
    )
    assert code == 0, err
    assert existing.read_bytes() == b"the user's file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept.nii.gz"]


def test_estimate_of_a_model_not_downloaded_comes_from_its_catalog_card(
    phantom, tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("MEDSEGANY_HOME", str(tmp_path / "empty_home"))
    argv = ["segment", phantom, "--box-ijk", "14,20,2,46,44,2", "--device", "cpu", "--estimate"]
    code, out, err = run_cli(capsys, *argv, "--model", "sam2.1_hiera_large")
    assert code == 0, err
    assert "sam2.1_hiera_large on 5 slices" in out and "224,400,000 parameters" in out
    code, out, err = run_cli(capsys, *argv, "--model", "medsam2_latest", "--precision", "float32")
    assert code == 0, err
    # float32 weights of 38 962 498 parameters, no bf16 copy
    assert "weights 0.15 GiB" in out
    code, _, err = run_cli(capsys, *argv, "--model", "edgetam")
    assert_one_line_error(code, err, "not supported")


def test_estimate_that_cannot_fit_prints_it_then_exits_1(phantom, capsys, monkeypatch):
    import medsegany.memory_estimate as memory_estimate

    monkeypatch.setattr(memory_estimate, "available_memory_bytes", lambda device="cpu": 64 * 2**20)
    code, out, err = run_cli(capsys, "segment", phantom, "--box-ijk", "14,20,2,46,44,2", "--estimate")
    assert "it does not fit even on a few slices" in out
    assert_one_line_error(code, err, "does not fit")


def test_an_estimate_reads_the_header_alone_and_says_what_a_full_read_says(phantom, capsys, monkeypatch):
    import medsegany.volume as volume_module

    argv = ["segment", phantom, "--box-ijk", "14,20,2,46,44,2", "--device", "cpu", "--estimate"]

    def needs(out: str) -> list[str]:  # each line without what is available (free memory moves a little)
        return [line.split("; ")[0] for line in out.splitlines()]

    real_read = volume_module.read_volume

    def never(*args, **kwargs):
        raise AssertionError("an estimate read the voxels")

    monkeypatch.setattr(volume_module, "read_volume", never)
    code, from_header, err = run_cli(capsys, *argv)
    assert code == 0, err
    # the same estimate as from the voxels read (the header's stand-in counts the same bytes)
    monkeypatch.setattr(volume_module, "read_volume_header", real_read)
    code, from_voxels, err = run_cli(capsys, *argv)
    assert code == 0, err
    assert needs(from_voxels) == needs(from_header) and "needs about" in from_header
