"""``medlens --max-voxels N COMMAND``: the work budget of one CLI run, and the clean exits (status 2, one line,
no traceback) for a refusal, running out of memory and input nested past the recursion limit."""

from __future__ import annotations

import argparse
import os

import numpy as np
import pytest
from PIL import Image as PILImage

from medlens.budget import CLI_BUDGET, current_budget
from medlens.cli import command_budget, main, voxel_count
from medlens.io import Image, identity_direction, write_image


@pytest.fixture
def grey_png(tmp_path):
    path = tmp_path / "scan.png"
    PILImage.fromarray(np.zeros((48, 64), np.uint8)).save(path)  # 64 wide, 48 high: 3,072 pixels
    return path


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    status = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def test_max_voxels_refuses_an_image_one_voxel_past_it_with_the_way_to_raise_it(capsys, grey_png):
    status, out, _ = run_cli(capsys, "--max-voxels", 3072, "info", grey_png)
    assert status == 0 and "(1, 64, 48)" in out
    status, out, err = run_cli(capsys, "--max-voxels", 3071, "info", grey_png)
    assert status == 2 and out == ""
    assert err.startswith("medlens info: error: ") and err.count("\n") == 1
    assert "3,072 voxels (1 x 64 x 48), more than the limit of 3,071; downsample the image, or raise " \
           "`medlens --max-voxels` (now 3,071)" in err
    assert "Traceback" not in err


def test_the_issues_example_exits_2_with_the_flag_and_0_without(capsys, grey_png):
    status, _, err = run_cli(capsys, "--max-voxels", 1000, "info", grey_png)
    assert status == 2 and "more than the limit of 1,000" in err
    status, _, err = run_cli(capsys, "info", grey_png)
    assert status == 0 and err == ""


def test_the_budget_holds_for_one_run_only(capsys, grey_png):
    run_cli(capsys, "--max-voxels", 1000, "info", grey_png)
    assert current_budget() is CLI_BUDGET  # a second main() in the same process starts from the CLI's budget
    assert command_budget(None) is CLI_BUDGET
    assert command_budget(5).max_voxels == 5 and "--max-voxels` (now 5)" in command_budget(5).hint


@pytest.mark.parametrize("text, expected", [("1073741824", 1 << 30), ("1_000_000", 10**6), ("2e9", 2 * 10**9)])
def test_max_voxels_takes_whole_numbers_in_the_usual_spellings(text, expected):
    assert voxel_count(text) == expected


@pytest.mark.parametrize("text, message", [("0", "positive whole number"), ("-5", "positive whole number"),
                                           ("1.5", "positive whole number"), ("nan", "positive whole number"),
                                           ("inf", "positive whole number"), ("lots", "such as 2000000000")])
def test_max_voxels_refuses_what_is_not_a_positive_whole_number(capsys, text, message):
    with pytest.raises(argparse.ArgumentTypeError, match=message):
        voxel_count(text)
    with pytest.raises(SystemExit) as caught:
        main(["--max-voxels", text, "info", "x.png"])
    assert caught.value.code == 2 and "argument --max-voxels" in capsys.readouterr().err


def test_input_nested_past_the_recursion_limit_is_a_clean_exit_2(capsys, tmp_path):
    plan = tmp_path / "plan.yaml"
    plan.write_text("data:\n  input_size: " + "[" * 20_000 + "]" * 20_000 + "\n")
    status, _, err = run_cli(capsys, "train", "--plan", plan, tmp_path)
    assert status == 2 and "Traceback" not in err
    assert err.startswith("medlens train: error: an input is nested too deeply to read (recursion limit reached")


def test_voxels_far_coarser_than_the_plan_are_refused_before_any_resampling(capsys, seg_run, tmp_path):
    # 2 voxels of 100 m: on the demo plan's ~1 mm grid 8e15 voxels. Refused for what it is (nothing like the
    # training images), under the default budget and under one raised past it alike.
    huge = write_image(Image(np.zeros((1, 2, 2, 2), np.float32), (1e5,) * 3, (0.0,) * 3, identity_direction(3)),
                       tmp_path / "huge_voxels.nii.gz")
    for budget in ([], ["--max-voxels", "1e17"]):
        status, out, err = run_cli(capsys, *budget, "predict", seg_run.root, huge, "--out", tmp_path / "masks")
        assert status == 1 and "far coarser than the model's" in out + err and "Traceback" not in err


def test_running_out_of_memory_is_a_clean_exit_2_that_says_what_to_do(capsys, tmp_path):
    # a sparse .npy of 1 TiB (8 disk blocks) whose header and size agree: past a budget raised to 1e17 only the
    # allocation itself can fail, and does at once
    path = tmp_path / "terabyte.npy"
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (1 << 19, 1 << 19)})
        header = f.tell()
    os.truncate(path, header + 4 * (1 << 38))
    status, _, err = run_cli(capsys, "--max-voxels", "1e17", "info", path)
    assert status == 2 and "Traceback" not in err
    assert err.startswith("medlens info: error: ") and "too large to read on this machine (out of memory)" in err
    status, _, err = run_cli(capsys, "info", path)  # the default budget refuses it before trying
    assert status == 2 and "more than the limit of 1,073,741,824" in err
