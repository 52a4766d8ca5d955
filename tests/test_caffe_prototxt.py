"""The text-format parser: syntax corner cases, errors with positions, every reference prototxt."""
from __future__ import annotations

import math

import pytest

from fcnseg.caffe.prototxt import net_layers, parse_prototxt, read_prototxt
from fcnseg.errors import UserError


def test_nested_messages_repeated_fields_and_scalars():
    text = """
    name: "net"  # a comment
    layer {
      name: 'conv'  type: "Convolution"
      bottom: "data" top: "conv"
      param { lr_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
      convolution_param { num_output: 64 pad: 100 kernel_size: 3 bias_term: false
                          weight_filler { type: "gaussian" std: 1e-2 } }
    }
    layer < name: "pool"; type: "Pooling"; pooling_param: { pool: MAX kernel_size: 2 stride: 2 } >
    """
    net = parse_prototxt(text)
    assert net["name"] == "net"
    conv, pool = net["layer"]
    assert conv["top"] == ["conv"] and conv["bottom"] == ["data"]
    assert conv["param"] == [{"lr_mult": 1}, {"lr_mult": 2, "decay_mult": 0}]
    cp = conv["convolution_param"]
    assert cp["num_output"] == 64 and cp["pad"] == [100] and cp["kernel_size"] == [3]
    assert cp["bias_term"] is False
    assert cp["weight_filler"] == {"type": "gaussian", "std": 0.01}
    assert pool["pooling_param"] == {"pool": "MAX", "kernel_size": [2], "stride": [2]}


def test_numbers_and_special_values():
    d = parse_prototxt("a: -3 b: 0x1F c: 1.5e-10 d: .5 e: 2.0f f: -inf g: nan h: 1e5 i: true j: False")
    assert d["a"] == -3 and isinstance(d["a"], int)
    assert d["b"] == 31
    assert d["c"] == 1.5e-10 and d["d"] == 0.5 and d["e"] == 2.0 and d["h"] == 1e5
    assert d["f"] == -math.inf and math.isnan(d["g"])
    assert d["i"] is True and d["j"] is False


def test_string_escapes_and_concatenation():
    d = parse_prototxt(r"""s: "a\"b\\c\n\t\x41\101\u00e9" t: 'it\'s' "more" u: "{\'mean\': (1, 2)}" """)
    assert d["s"] == 'a"b\\c\n\tAAé'
    assert d["t"] == "it's" + "more"
    assert d["u"] == "{'mean': (1, 2)}"


def test_list_syntax_and_unknown_repeated_field():
    d = parse_prototxt("dim: [1, 3, 500, 500] other: 1 other: 2 single: 7 nested: [{a: 1}, {a: 2}]")
    assert d["dim"] == [1, 3, 500, 500]
    assert d["other"] == [1, 2]  # an unknown field given twice keeps both values
    assert d["single"] == 7
    assert d["nested"] == [{"a": 1}, {"a": 2}]


def test_context_dependent_repetition():
    d = parse_prototxt('layer { python_param { layer: "VOCSegDataLayer" } '
                       'input_param { shape { dim: 1 dim: 3 } } reshape_param { shape { dim: 2 } } }')
    layer = d["layer"][0]
    assert layer["python_param"]["layer"] == "VOCSegDataLayer"
    assert layer["input_param"]["shape"] == [{"dim": [1, 3]}]
    assert layer["reshape_param"]["shape"] == {"dim": [2]}


@pytest.mark.parametrize("text, where", [
    ('layer {\n  name: "x"\n', "end of file"),
    ('a: 1\nb { c: }', ":2:"),
    ('a 1', ":1:3"),
    ('a: "unterminated', ":1:4: unterminated string"),
    ('}', ":1:1"),
    ('a: [1, 2', "end of file"),
    ('a: "\\q"', "escape"),
])
def test_syntax_errors_name_the_position(text, where):
    with pytest.raises(UserError, match="net.prototxt") as exc:
        parse_prototxt(text, "net.prototxt")
    assert where in str(exc.value)


def test_read_errors(tmp_path):
    with pytest.raises(UserError, match="no such prototxt"):
        read_prototxt(tmp_path / "missing.prototxt")
    bad = tmp_path / "binary.prototxt"
    bad.write_bytes(b"\xff\xfe\x00\x81")
    with pytest.raises(UserError, match="not a readable text prototxt"):
        read_prototxt(bad)


def test_every_reference_prototxt_parses(shared_dir):
    files = sorted((shared_dir / "reference" / "fcn-berkeleyvision").glob("*/*.prototxt"))
    assert len(files) >= 40
    for path in files:
        d = read_prototxt(path)
        if path.name == "solver.prototxt":
            assert isinstance(d["base_lr"], float) and d["lr_policy"] == "fixed"
            assert isinstance(d["test_iter"], list)
        else:
            layers = net_layers(d, str(path))
            assert layers and all(isinstance(layer["name"], str) for layer in layers)
            assert all(isinstance(layer.get("top", []), list) for layer in layers)


def test_voc_fcn8s_content(shared_dir):
    d = read_prototxt(shared_dir / "reference/fcn-berkeleyvision/voc-fcn8s/val.prototxt")
    layers = {layer["name"]: layer for layer in d["layer"]}
    assert layers["conv1_1"]["convolution_param"]["pad"] == [100]
    assert layers["score_pool4c"]["crop_param"] == {"axis": 2, "offset": [5]}
    assert layers["upscore8"]["convolution_param"]["bias_term"] is False
    assert "'mean': (104.00699, 116.66877, 122.67892)" in layers["data"]["python_param"]["param_str"]
    solver = read_prototxt(shared_dir / "reference/fcn-berkeleyvision/voc-fcn8s/solver.prototxt")
    assert solver["base_lr"] == 1e-14 and solver["momentum"] == 0.99 and solver["test_net"] == ["val.prototxt"]


def test_legacy_v1_layers_are_renamed():
    d = parse_prototxt('input: "data" input_dim: 1 input_dim: 3 input_dim: 8 input_dim: 8 '
                       'layers { name: "c" type: CONVOLUTION bottom: "data" top: "c" blobs_lr: 1 blobs_lr: 2 } '
                       'layers { name: "p" type: POOLING bottom: "c" top: "p" } '
                       'layers { name: "l" type: SOFTMAX_LOSS bottom: "p" }')
    assert [layer["type"] for layer in net_layers(d)] == ["Convolution", "Pooling", "SoftmaxWithLoss"]
    assert d["input_dim"] == [1, 3, 8, 8]
    assert net_layers(d)[0]["blobs_lr"] == [1, 2]
    with pytest.raises(UserError, match="mixes"):
        net_layers(parse_prototxt('layer { name: "a" } layers { name: "b" }'))
