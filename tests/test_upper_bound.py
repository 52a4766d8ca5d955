"""IU upper bound per output stride (API and `fcnseg analyze upper-bound`)."""
from __future__ import annotations

import functools
import json
import math

import numpy as np
import pytest

from fcnseg.analysis.upper_bound import cell_centres, downsample_labels, parse_factors, reconstruct_labels, upper_bound
from fcnseg.cli.main import main
from fcnseg.errors import UserError
from test_stats import ToyDataset as _ToyDataset

ToyDataset = functools.partial(_ToyDataset, names=("a", "b"))  # the label-only data set interface, 2 classes


def test_cell_centres_and_downsampling():
    assert cell_centres(10, 4).tolist() == [2, 6, 9]  # last cell 8..9, centre 9
    assert cell_centres(8, 3).tolist() == [1, 4, 7]
    assert cell_centres(5, 1).tolist() == [0, 1, 2, 3, 4]
    lab = np.arange(100).reshape(10, 10)
    assert downsample_labels(lab, 4).tolist() == [[22, 26, 29], [62, 66, 69], [92, 96, 99]]
    np.testing.assert_array_equal(reconstruct_labels(lab, 1), lab)
    rec = reconstruct_labels(lab, 4)
    assert rec.shape == (10, 10)
    assert (rec[:4, :4] == 22).all() and (rec[8:, 8:] == 99).all() and (rec[4:8, 8:] == 69).all()


def test_scores_of_a_square_by_hand():
    lab = np.zeros((8, 8), np.uint8)
    lab[1:4, 1:4] = 1  # 9 pixels, inside cell (0, 0) whose centre (2, 2) is class 1
    r = upper_bound(ToyDataset([lab]), [4, 1])
    # stride 4: cell (0,0) (16 px) predicted 1, the rest 0
    assert r[4]["iou"] == pytest.approx([48 / 55, 9 / 16])
    assert r[4]["mean_iou"] == pytest.approx((48 / 55 + 9 / 16) / 2)
    assert r[4]["pixel_acc"] == pytest.approx(57 / 64)
    assert r[4]["mean_acc"] == pytest.approx((48 / 55 + 1) / 2)
    assert r[4]["void_predicted"] == 0
    assert r[1]["mean_iou"] == 1.0 and r[1]["pixel_acc"] == 1.0


def test_void_cell_centre_counts_as_wrong():
    lab = np.zeros((4, 4), np.uint8)
    lab[2, 2] = 255  # the centre of the only 4x4 cell
    r = upper_bound(ToyDataset([lab]), [4, 2])
    assert r[4]["pixel_acc"] == 0.0 and r[4]["void_predicted"] == 1.0
    assert r[4]["iou"][0] == 0.0 and math.isnan(r[4]["iou"][1])  # class b: absent, left out
    assert r[4]["mean_iou"] == 0.0
    # stride 2: the centres are rows/columns 1 and 3, so the void pixel is no centre
    assert r[2]["pixel_acc"] == 1.0 and r[2]["void_predicted"] == 0.0
    lab[3, 3] = 255  # now the centre of cell (1, 1): its 2 other labelled pixels are wrong
    r = upper_bound(ToyDataset([lab]), [2])
    assert r[2]["pixel_acc"] == pytest.approx(12 / 14)
    assert r[2]["mean_iou"] == pytest.approx(12 / 14)
    assert r[2]["void_predicted"] == pytest.approx(2 / 14)


def test_bad_factors():
    assert parse_factors("8, 16,32") == [8, 16, 32]
    for bad in ("", "8,x", "0,8", "-4"):
        with pytest.raises(UserError, match="factors"):
            parse_factors(bad)
    with pytest.raises(UserError):
        upper_bound(ToyDataset([np.zeros((2, 2))]), [0])


def test_cli_upper_bound_on_camvid_val(shared_dir, capsys):
    root = shared_dir / "data" / "camvid"
    if not (root / "val.txt").is_file():
        pytest.skip("CamVid not found")
    argv = ["analyze", "upper-bound", "--dataset", "camvid", "--root", str(root), "--split", "val",
            "--factors", "1,8,64"]
    assert main(argv + ["--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["num_images"] == 101
    f1, f8, f64 = (out["factors"][k] for k in ("1", "8", "64"))
    assert f1["mean_iou"] == 1.0 and f1["pixel_acc"] == 1.0
    assert 0.3 < f64["mean_iou"] < f8["mean_iou"] < 0.95
    assert f64["pixel_acc"] < f8["pixel_acc"] < 1.0
    assert len(f8["iou"]) == 11

    assert main(argv + ["--per-class"]) == 0
    table = capsys.readouterr().out
    row8 = next(line.split() for line in table.splitlines() if line.split()[:1] == ["8"])
    assert float(row8[1]) == pytest.approx(100 * f8["mean_iou"], abs=0.051)
    assert "Pedestrian" in table


def test_cli_analyze_needs_a_subcommand(capsys):
    assert main(["analyze"]) == 2
    assert "upper-bound" in capsys.readouterr().err
