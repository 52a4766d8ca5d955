"""Class frequencies, median-frequency weights and image sizes (API and `fcnseg stats`)."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

from fcnseg.analysis.stats import DatasetStats, class_frequencies, compute_stats, median_frequency_weights
from fcnseg.cli.main import main
from fcnseg.errors import UserError


class ToyDataset:
    """The minimal data set interface the tools use: class names, ignore index, load_raw."""

    def __init__(self, labels, names=("a", "b", "c", "d")):
        self.labels = [np.asarray(lab, dtype=np.uint8) for lab in labels]
        self.class_names = list(names)
        self.ignore_index = 255

    def __len__(self):
        return len(self.labels)

    def load_raw(self, i):
        lab = self.labels[i]
        return {"image": np.zeros(lab.shape + (3,), np.uint8), "label": lab}


TOY = ToyDataset([[[0, 0, 1], [255, 1, 1]], [[0, 2], [2, 2]]])


def test_counts_frequencies_and_weights_by_hand():
    st = compute_stats(TOY)
    assert st.num_images == 2 and st.sizes == {(2, 3): 1, (2, 2): 1}
    assert st.pixel_counts.tolist() == [3, 3, 3, 0, 1]
    assert st.images_with.tolist() == [2, 1, 1, 0, 1]
    np.testing.assert_allclose(class_frequencies(TOY), [1 / 3, 1 / 3, 1 / 3, 0])
    # freq(c) = pixels of c / all pixels of the images holding c: 3/10, 3/6, 3/4; d absent
    np.testing.assert_allclose(st.presence_frequencies()[:3], [0.3, 0.5, 0.75])
    assert np.isnan(st.presence_frequencies()[3])
    np.testing.assert_allclose(median_frequency_weights(TOY), [0.5 / 0.3, 1.0, 0.5 / 0.75, 0.0])
    # with the ignore label's 1/6 in the median: median(0.3, 0.5, 0.75, 1/6) = 0.4
    np.testing.assert_allclose(st.median_frequency_weights(ignore_in_median=True),
                               [0.4 / 0.3, 0.8, 0.4 / 0.75, 0.0])
    summary = st.to_dict(class_weights=True)
    assert summary["labelled_pixels"] == 9 and summary["ignored_pixels"] == 1
    assert summary["image_sizes"] == {"sizes": {"2x3": 1, "2x2": 1}, "height": [2, 2], "width": [2, 3]}


def test_bad_labels_and_empty_data():
    with pytest.raises(UserError, match="label value 7 out of range"):
        compute_stats(ToyDataset([[[0, 7]]]))
    with pytest.raises(UserError, match="no labelled pixels"):
        compute_stats(ToyDataset([[[255, 255]]])).median_frequency_weights()


# --------------------------------------------------------------------- real CamVid
# Per-class pixel and image counts (void last) of the 367 SegNet CamVid training labels,
# and the median-frequency weights computed from them with void in the median, as
# published by a third party in alexgkendall/caffe-segnet issue 37.
ISSUE37_PIXELS = [10682767, 14750079, 623349, 20076880, 2845085, 6166762, 743859, 714595, 3719877,
                  405385, 184967, 2503995]
ISSUE37_IMAGES = [366, 365, 366, 367, 349, 319, 351, 173, 360, 317, 201, 367]
ISSUE37_WEIGHTS = [0.256527308, 0.185282667, 4.396287575, 0.136869322, 0.918473131, 0.387319864,
                   3.533074291, 1.812685267, 0.724619798, 5.855012981, 8.136508447]


@pytest.fixture(scope="module")
def camvid_train(shared_dir):
    from fcnseg.data import get_dataset

    root = shared_dir / "data" / "camvid"
    return compute_stats(get_dataset("camvid", root, "train"))


def _readme_weights(shared_dir) -> np.ndarray:
    text = (shared_dir / "data" / "camvid" / "README.md").read_text()
    block = text.split("Median-frequency class weights over train", 1)[1].split("\n\n", 1)[0]
    return np.array([float(v) for v in re.findall(r"\d+\.\d+", block)])


def test_camvid_train_counts_match_the_published_counts(camvid_train):
    assert camvid_train.num_images == 367 and camvid_train.sizes == {(360, 480): 367}
    assert camvid_train.pixel_counts.tolist() == ISSUE37_PIXELS
    assert camvid_train.images_with.tolist() == ISSUE37_IMAGES


def test_camvid_train_weights(camvid_train, shared_dir):
    ours = camvid_train.median_frequency_weights(ignore_in_median=True)
    np.testing.assert_allclose(ours, ISSUE37_WEIGHTS, rtol=0, atol=5e-5)  # 4 decimals
    plain = camvid_train.median_frequency_weights()
    np.testing.assert_allclose(plain, [0.2793, 0.2017, 4.7865, 0.1490, 1.0000, 0.4217, 3.8467, 1.9736,
                                       0.7889, 6.3747, 8.8587], rtol=0, atol=5e-5)
    # SegNet's published weights (the data README) are not reproducible from these labels:
    # ten classes agree within 11% (void in the median), SignSymbol (index 6) is 2.7x off.
    readme = _readme_weights(shared_dir)
    assert readme.shape == (11,)
    ratio = ours / readme
    others = np.delete(ratio, 6)
    assert np.all(np.abs(others - 1) < 0.11), ratio
    assert 0.3 < ratio[6] < 0.4


def test_cli_stats_json_and_table(shared_dir, capsys):
    root = shared_dir / "data" / "camvid"
    if not (root / "val.txt").is_file():
        pytest.skip("CamVid not found")
    from fcnseg.data import get_dataset

    ref = compute_stats(get_dataset("camvid", root, "val"))
    assert main(["stats", "--dataset", "camvid", "--root", str(root), "--split", "val",
                 "--class-weights", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["num_images"] == 101
    assert [c["pixels"] for c in out["classes"]] == ref.pixel_counts[:-1].tolist()
    np.testing.assert_allclose(out["class_weights"], ref.median_frequency_weights())
    assert out["image_sizes"]["sizes"] == {"360x480": 101}

    assert main(["stats", "--dataset", "camvid", "--root", str(root), "--split", "val",
                 "--class-weights"]) == 0
    table = capsys.readouterr().out
    assert "camvid val: 101 images, 11 classes" in table
    assert "360x480 (101)" in table
    assert ", ".join(f"{w:.4f}" for w in ref.median_frequency_weights()) in table
    sky = next(line for line in table.splitlines() if line.startswith("Sky"))
    assert f"{ref.pixel_counts[0]:,}" in sky


def test_cli_stats_bad_root_is_a_one_line_error(tmp_path, capsys):
    assert main(["stats", "--dataset", "camvid", "--root", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert "nope" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_stats_dataclass_without_weights_has_no_weight_columns():
    summary = DatasetStats.to_dict(compute_stats(TOY))
    assert "class_weights" not in summary
    assert all("median_frequency_weight" not in row for row in summary["classes"])
