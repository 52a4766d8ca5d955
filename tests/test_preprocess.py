"""Input normalisation: values of both presets, and the result stays on the input's device."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fcnseg.preprocess import denormalize, normalize


def _image() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)


@pytest.mark.parametrize("preset", ["caffe", "imagenet"])
def test_values_and_round_trip(preset):
    img = _image()
    out = normalize(img, preset)
    assert out.shape == (3, 5, 7) and out.dtype == torch.float32
    if preset == "caffe":  # BGR, 0..255 minus the VGG mean
        expected = img[..., ::-1].transpose(2, 0, 1) - np.array([104.00699, 116.66877, 122.67892])[:, None, None]
    else:
        expected = (img.transpose(2, 0, 1) / 255.0 - np.array([0.485, 0.456, 0.406])[:, None, None]) \
            / np.array([0.229, 0.224, 0.225])[:, None, None]
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-5, atol=1e-4)
    assert torch.equal(normalize(torch.from_numpy(img), preset), out)  # tensor input == array input
    assert np.array_equal(denormalize(out, preset), img)


def test_result_is_on_the_input_device():
    # the "meta" device stands in for a GPU on machines without one: constants made on the
    # CPU would fail to combine with it ("not on the expected device")
    t = torch.zeros(4, 6, 3, dtype=torch.uint8, device="meta")
    out = normalize(t, "caffe")
    assert out.device.type == "meta" and out.shape == (3, 4, 6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("preset", ["caffe", "imagenet"])
def test_cuda_tensor_is_normalised_on_the_gpu(preset):
    img = _image()
    out = normalize(torch.from_numpy(img).cuda(), preset)
    assert out.is_cuda
    torch.testing.assert_close(out.cpu(), normalize(img, preset))


def test_read_only_array_is_accepted_without_a_warning():
    import warnings

    img = _image()
    img.flags.writeable = False  # as np.asarray(PIL image) gives
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = normalize(img, "imagenet")
    img.flags.writeable = True
    assert torch.equal(out, normalize(img, "imagenet"))


def test_dataset_reference_means_are_named_presets():
    from fcnseg.data.nyud import MEAN_BGR as NYUD
    from fcnseg.data.siftflow import MEAN_BGR as SIFT
    from fcnseg.preprocess import get_normalization

    assert get_normalization("caffe-nyud").mean == NYUD
    assert get_normalization("caffe-siftflow").mean == SIFT


def test_channels_last_normalisation_is_the_same_numbers_without_a_layout_copy():
    img = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    for preset in ("imagenet", "caffe"):
        cl, plain = normalize(img, preset, channels_last=True), normalize(img, preset)
        assert torch.equal(cl, plain) and plain.is_contiguous()
        assert cl.unsqueeze(0).is_contiguous(memory_format=torch.channels_last) and not cl.is_contiguous()
