"""The model card: JSON round trip, every metadata layout fcnseg has written, and its readers."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fcnseg.card import CARD_VERSION, InputSpec, ModelCard, model_inputs
from fcnseg.errors import UserError
from fcnseg.inference import load_model, load_net, shipped_weights_path
from fcnseg.models import get_model
from fcnseg.weights import read_meta, save_weights


def test_json_round_trip_keeps_every_field():
    card = ModelCard(model="fcn8s_lite0_rgb_hha", num_classes=3, class_names=["a", "b", "c"],
                     palette=[[1, 2, 3]], options={"learnable_upsampling": True},
                     inputs=[InputSpec("rgb", "image", 3, "caffe-nyud"),
                             InputSpec("hha", "hha", 3, hha_mean=(1.0, 2.0, 3.0))],
                     dataset="nyud", provenance={"step": 7, "val": {"mean_iou": 0.5}})
    again = ModelCard.from_json(card.to_json())
    assert again == card
    assert json.loads(card.to_json())["card_version"] == CARD_VERSION
    assert again.palette[1] != [1, 2, 3] and len(again.palette) == 3  # completed from the default palette
    assert again.sample_keys == ["image", "hha"] and again.multi_input and again.normalization == "caffe-nyud"


def test_a_newer_card_version_and_bad_cards_are_one_line_errors():
    data = ModelCard(model="fcn8s_lite0", num_classes=2).to_dict()
    with pytest.raises(UserError, match="newer than this fcnseg reads"):
        ModelCard.from_dict({**data, "card_version": CARD_VERSION + 1}, "f.safetensors")
    with pytest.raises(UserError, match="f.safetensors: .*unknown sample key 'ir'"):
        ModelCard.from_dict({**data, "inputs": [{"key": "ir"}]}, "f.safetensors")
    with pytest.raises(UserError, match="3 class names for 2 classes"):
        ModelCard.from_dict({**data, "class_names": ["a", "b", "c"]}, "f.safetensors")
    with pytest.raises(UserError, match="not valid JSON"):
        ModelCard.from_json("{", "f.json")


def test_the_shipped_weights_file_reads_as_a_card():
    path = shipped_weights_path("camvid-fcn8s-lite0")
    meta = read_meta(path)
    assert "card_version" not in meta  # written before cards: the compatibility reader is exercised
    card = ModelCard.from_meta(meta, source=str(path))
    assert card.model == "fcn8s_lite0" and card.num_classes == 11 and card.dataset == "camvid"
    assert card.inputs == [InputSpec("image", "image", 3, "imagenet")]
    assert card.options == {"learnable_upsampling": True} and card.trained
    assert card.provenance["step"] == 180 and card.provenance["val"]["mean_iou"] > 0.7
    seg = load_model("camvid-fcn8s-lite0")
    assert seg.card == card and seg.class_names[0] == "Sky"


def test_old_rgbd_metadata_loads_with_the_preprocessing_it_was_trained_with(tmp_path):
    """A weights file `fcnseg train` wrote before cards (flat metadata dict): raw depth in metres."""
    net = get_model("fcn8s_lite0_rgbd", 40)
    old = {"model": "fcn8s_lite0_rgbd", "num_classes": 40, "class_names": [f"c{i}" for i in range(40)],
           "palette": None, "normalization": "caffe-nyud", "options": {}, "dataset": "nyud", "input_key": "image",
           "head_class_names": {}, "val": {"mean_iou": 0.1}, "step": 3}
    path = save_weights(net.state_dict(), tmp_path / "old.safetensors", old)
    loaded, card = load_net(path)
    assert [(s.name, s.key, s.channels) for s in card.inputs] == [("rgb", "image", 3), ("depth", "depth", 1)]
    assert card.inputs[0].normalization == "caffe-nyud" and card.inputs[1].depth_log_mean is None
    assert card.provenance == {"val": {"mean_iou": 0.1}, "step": 3}
    # the new card written back reads back equal
    assert ModelCard.from_meta(card.to_meta(), source="x") == card
    # a new RGB-D card uses the reference log-depth
    assert ModelCard.for_net(net).inputs[1].depth_log_mean == pytest.approx(7.844)


def test_old_checkpoint_with_only_a_config_and_a_legacy_hha_input_key(tmp_path):
    from fcnseg.training.checkpoint import save_checkpoint

    net = get_model("fcn8s_lite0", 4)
    save_checkpoint({"model": net.state_dict(), "config": {"model": "fcn8s_lite0", "num_classes": 4,
                                                           "dataset": "nyud", "input_key": "hha"}},
                    tmp_path / "last.pt")
    _, card = load_net(tmp_path / "last.pt")
    assert card.inputs[0].key == "hha" and card.inputs[0].hha_mean is None and card.dataset == "nyud"


def test_an_hha_card_makes_predict_feed_hha_minus_its_mean():
    net = get_model("fcn8s_lite0", 4)
    card = ModelCard.for_net(net, model="fcn8s_lite0", input_key="hha", trained=True)
    assert card.inputs[0].hha_mean == pytest.approx((132.431, 94.076, 118.477))
    from fcnseg.inference import ModelInfo, Segmenter
    from fcnseg.runtime.backends import TorchBackend

    seg = Segmenter(TorchBackend(net, torch.device("cpu"), optimize=False), ModelInfo("hha", card))
    hha = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    x = seg._batch_tensor([hha, hha])
    mean = torch.tensor(card.inputs[0].hha_mean).view(3, 1, 1)
    want = torch.from_numpy(hha.astype(np.float32)).permute(2, 0, 1) - mean
    assert x.shape == (2, 3, 5, 7) and torch.allclose(x[1], want)


def test_model_inputs_from_samples_and_from_a_collated_batch():
    card = ModelCard.for_net(get_model("fcn8s_lite0_rgbd", 40, ), model="fcn8s_lite0_rgbd")
    samples = [{"image": torch.zeros(3, 4, 5), "depth": torch.ones(1, 4, 5)} for _ in range(2)]
    x = model_inputs(card, samples)
    assert set(x) == {"rgb", "depth"} and x["depth"].shape == (2, 1, 4, 5)
    x = model_inputs(card, {"image": torch.zeros(2, 3, 4, 5), "depth": torch.ones(2, 4, 5)})
    assert x["depth"].shape == (2, 1, 4, 5)
    with pytest.raises(UserError, match="needs the 'depth' input"):
        model_inputs(card, [{"image": torch.zeros(3, 4, 5)}])
