"""The held-out-sequence protocol: CamVid splits derived from file-name prefixes, per-sequence scores."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from fcnseg.cli.main import main
from fcnseg.data import get_dataset
from fcnseg.data.camvid import heldout_splits, sequence_of
from fcnseg.errors import UserError
from fcnseg.evaluate import evaluate

# a tiny CamVid: train has three drives, val the third one only (as the SegNet split)
TRAIN = {"0001TP": 2, "0006R0": 3, "0016E5": 2}
VAL = {"0016E5": 2}


def write_sequences(root: Path, size: tuple[int, int] = (12, 16)) -> Path:
    rng = np.random.default_rng(1)
    for split, seqs in (("train", TRAIN), ("val", VAL)):
        (root / split).mkdir(parents=True)
        (root / f"{split}annot").mkdir()
        lines = []
        for seq, n in seqs.items():
            for k in range(n):
                name = f"{seq}_{k + (100 if split == 'val' else 0):05d}.png"
                Image.fromarray(rng.integers(0, 256, size + (3,), dtype=np.uint8)).save(root / split / name)
                Image.fromarray(rng.integers(0, 12, size, dtype=np.uint8), mode="L").save(
                    root / f"{split}annot" / name)
                lines.append(f"/SegNet/CamVid/{split}/{name} /SegNet/CamVid/{split}annot/{name}")
        (root / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture()
def camvid(tmp_path) -> Path:
    return write_sequences(tmp_path / "camvid")


def test_sequence_is_the_file_name_prefix():
    assert sequence_of("/SegNet/CamVid/test/Seq05VD_f02370.png") == "Seq05VD"
    assert sequence_of("train/0016E5_07959.png") == "0016E5"
    assert heldout_splits("0006R0") == ("train-minus-0006R0", "train-only-0006R0")
    assert heldout_splits("0016E5", base="trainval") == ("trainval-minus-0016E5", "trainval-only-0016E5")


def test_derived_splits(camvid):
    train = get_dataset("camvid", camvid, "train")
    assert train.sequences == TRAIN
    tv = get_dataset("camvid", camvid, "trainval")
    assert len(tv) == 9 and tv.sequences == {"0001TP": 2, "0006R0": 3, "0016E5": 4}
    assert [f["image"] for f in tv.files] == [f["image"] for f in train.files] + \
        [f["image"] for f in get_dataset("camvid", camvid, "val").files]
    fit, held = (get_dataset("camvid", camvid, s) for s in heldout_splits("0006R0"))
    assert fit.sequences == {"0001TP": 2, "0016E5": 2} and held.sequences == {"0006R0": 3}
    # the two sides of a fold partition the base split, order kept
    assert sorted(map(str, (f["image"] for f in fit.files + held.files))) == sorted(
        map(str, (f["image"] for f in train.files)))
    assert get_dataset("camvid", camvid, "trainval-only-0016E5").sequences == {"0016E5": 4}
    assert get_dataset("camvid", camvid, "train-minus-0001TP+0006R0").sequences == {"0016E5": 2}
    s = held[0]  # samples read as usual
    assert s["image"].shape == (12, 16, 3) and s["path"].endswith("0006R0_00000.png")
    assert held.sequence_of(2) == "0006R0"


def test_first_and_last_frames_of_a_sequence(camvid):
    """A drive's earlier frames trained on, its next segment held out (as CamVid test's 0001TP)."""
    # list the 0006R0 frames out of time order: the split must still take the last ones by name
    lines = (camvid / "train.txt").read_text().splitlines()
    lines[2], lines[4] = lines[4], lines[2]
    (camvid / "train.txt").write_text("\n".join(lines) + "\n")
    names = lambda split: [f["image"].name for f in get_dataset("camvid", camvid, split).files]  # noqa: E731
    assert names("train-only-0006R0.last2") == ["0006R0_00002.png", "0006R0_00001.png"]  # list order kept
    assert names("train-only-0006R0.first1") == ["0006R0_00000.png"]
    fit = names("train-minus-0006R0.last2")
    assert "0006R0_00000.png" in fit and len(fit) == 5
    assert sorted(fit + names("train-only-0006R0.last2")) == sorted(names("train"))
    assert names("train-only-0001TP+0006R0.first1") == ["0001TP_00000.png", "0001TP_00001.png", "0006R0_00000.png"]
    with pytest.raises(UserError, match=r"'0006R0\.last4' asks for 4 frames but 'train' has 3 of 0006R0 "
                                        r"\(expected 1\.\.3\)"):
        get_dataset("camvid", camvid, "train-only-0006R0.last4")
    with pytest.raises(UserError, match="asks for 0 frames"):
        get_dataset("camvid", camvid, "train-only-0006R0.last0")


def test_a_list_file_wins_over_a_derived_name(camvid):
    line = (camvid / "train.txt").read_text().splitlines()[0]
    (camvid / "trainval.txt").write_text(line + "\n")
    assert len(get_dataset("camvid", camvid, "trainval")) == 1
    (camvid / "train-only-0006R0.txt").write_text(line + "\n")
    assert get_dataset("camvid", camvid, "train-only-0006R0").sequences == {"0001TP": 1}


def test_derived_split_errors(camvid):
    with pytest.raises(UserError, match=r"sequence 'Seq05VD' is not in the 'train' split "
                                        r"\(its sequences: 0001TP, 0006R0, 0016E5\)"):
        get_dataset("camvid", camvid, "train-only-Seq05VD")
    with pytest.raises(UserError, match="'val-minus-0016E5' is empty"):
        get_dataset("camvid", camvid, "val-minus-0016E5")
    with pytest.raises(UserError, match=r"test\.txt: CamVid split list not found .*train-minus-0006R0"):
        get_dataset("camvid", camvid, "test-minus-0006R0")
    with pytest.raises(UserError, match=r"train-except-0006R0\.txt: CamVid split list not found"):
        get_dataset("camvid", camvid, "train-except-0006R0")


class PixelRule(nn.Module):
    """A fixed, input-dependent 'model': class = a quantised mix of the colour channels."""

    num_classes = 11
    normalization = "imagenet"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = (x[:, 0] * 3 + x[:, 1] * 5 - x[:, 2]).floor().long() % 11
        return nn.functional.one_hot(v, 11).permute(0, 3, 1, 2).float()


def test_evaluate_per_sequence_equals_each_sequence_alone(camvid):
    ds = get_dataset("camvid", camvid, "trainval")
    res = evaluate(PixelRule(), ds, progress=False, per_sequence=True, batch_size=2)
    assert list(res.sequences) == ["0001TP", "0006R0", "0016E5"]
    assert {q: n for q, (_, n) in res.sequences.items()} == {"0001TP": 2, "0006R0": 3, "0016E5": 4}
    total = sum(cm.numpy() for cm, _ in res.sequences.values())
    assert np.array_equal(total, res.confusion.numpy())
    alone = evaluate(PixelRule(), get_dataset("camvid", camvid, "trainval-only-0006R0"), progress=False)
    assert np.array_equal(res.sequences["0006R0"][0].numpy(), alone.confusion.numpy())
    d = res.to_dict()
    assert d["per_sequence"]["0006R0"]["mean_iou"] == pytest.approx(alone.scores["mean_iou"])
    assert d["per_sequence"]["0016E5"]["images"] == 4
    table = res.sequence_table()
    assert table.splitlines()[0].split()[:2] == ["sequence", "images"]
    assert [ln.split()[0] for ln in table.splitlines()[1:]] == ["0001TP", "0006R0", "0016E5", "all"]
    # without the option nothing changes
    plain = evaluate(PixelRule(), ds, progress=False)
    assert plain.sequences == {} and "per_sequence" not in plain.to_dict()
    assert np.array_equal(plain.confusion.numpy(), res.confusion.numpy())


def test_per_sequence_counts_skipped_images(camvid):
    (camvid / "train" / "0006R0_00001.png").write_bytes(b"broken")
    ds = get_dataset("camvid", camvid, "train")
    res = evaluate(PixelRule(), ds, progress=False, per_sequence=True, skip_bad=True)
    assert res.sequences["0006R0"][1] == 2 and res.num_images == 6


def test_per_sequence_needs_sequences(tmp_path):
    class NoSeq(torch.utils.data.Dataset):
        name, num_classes, ignore_index, class_names, transform = "plain", 11, 255, [str(i) for i in range(11)], None

        def __len__(self) -> int:
            return 1

    with pytest.raises(UserError, match="per-sequence scores need a data set that knows its sequences"):
        evaluate(PixelRule(), NoSeq(), progress=False, per_sequence=True)


def test_eval_cli_per_sequence(camvid, tmp_path, capsys):
    out_json = tmp_path / "scores.json"
    rc = main(["eval", "--model", "fcn32s_lite0", "--dataset", "camvid", "--root", str(camvid),
               "--split", "train", "--per-sequence", "--json", str(out_json), "--quiet", "--device", "cpu"])
    assert rc == 0
    out = capsys.readouterr().out
    rows = [ln.split() for ln in out.splitlines() if ln.split()[:1] in (["0001TP"], ["0006R0"], ["0016E5"], ["all"])]
    assert [r[:2] for r in rows] == [["0001TP", "2"], ["0006R0", "3"], ["0016E5", "2"], ["all", "7"]]
    data = json.loads(out_json.read_text())
    assert set(data["per_sequence"]) == set(TRAIN)
    assert data["per_sequence"]["0006R0"]["images"] == 3
    assert np.array_equal(sum(np.array(v["confusion"]) for v in data["per_sequence"].values()),
                          np.array(data["confusion"]))
