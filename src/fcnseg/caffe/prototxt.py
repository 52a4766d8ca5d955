"""A small parser for protobuf text format, enough for Caffe net and solver prototxts.

Why our own: fcnseg must read the reference ``.prototxt`` files without Caffe or a
compiled ``caffe.proto``. Text format is simple (fields, nested messages, strings,
numbers, enum identifiers, comments), so a schema-free parser of ~200 lines does it.

Without the schema we cannot know which fields are ``repeated``; the ones Caffe
declares repeated (``layer``, ``bottom``, ``top``, ``param``, ``kernel_size``, ``pad``,
``dim``, ``coeff``, ...) are always returned as lists, and any other field that
occurs more than once becomes a list too. Values: ``int``, ``float``, ``str``
(strings and enum identifiers alike), ``bool`` (``true``/``false``) and ``dict``
for nested messages.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ..errors import UserError

# Fields caffe.proto declares repeated wherever they occur.
REPEATED = frozenset({
    # NetParameter / LayerParameter / V1LayerParameter
    "layer", "layers", "input", "input_shape", "input_dim", "bottom", "top", "loss_weight", "param",
    "blobs", "propagate_down", "include", "exclude", "blobs_lr", "blob_share_mode",
    # BlobShape / BlobProto
    "dim", "data", "diff", "double_data", "double_diff",
    # ConvolutionParameter, CropParameter, EltwiseParameter, SliceParameter
    "kernel_size", "pad", "stride", "dilation", "offset", "coeff", "slice_point",
    # TransformationParameter, NetState(Rule), DummyDataParameter
    "mean_value", "stage", "not_stage", "data_filler",
    # SolverParameter
    "test_iter", "test_net", "test_net_param", "test_state", "stepvalue",
})
# Fields that are repeated only inside some messages (parent field name, field name).
REPEATED_IN = frozenset({
    ("input_param", "shape"), ("dummy_data_param", "shape"), ("dummy_data_param", "num"),
    ("dummy_data_param", "channels"), ("dummy_data_param", "height"), ("dummy_data_param", "width"),
    ("layers", "weight_decay"),
})
# Fields that are singular inside some messages although repeated elsewhere.
SINGULAR_IN = frozenset({("python_param", "layer"), ("layers", "layer")})

_TOKEN = re.compile(r"""
    (?P<ws>[ \t\r\n\f\v]+|\#[^\n]*)
  | (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
  | (?P<number>-?(?:0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?[fF]?)(?![\w.]))
  | (?P<ident>-?[A-Za-z_][\w]*|\[[\w.]+(?:/[\w.]+)?\])
  | (?P<punct>[{}<>:;,\[\]])
""", re.VERBOSE)

_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "a": "\a", "b": "\b", "f": "\f", "v": "\v",
            "\\": "\\", "'": "'", '"': '"', "?": "?"}
_SPECIAL_FLOATS = {"inf": float("inf"), "infinity": float("inf"), "nan": float("nan")}
_CLOSE = {"{": "}", "<": ">"}


class _Token:
    __slots__ = ("kind", "text", "line", "col")

    def __init__(self, kind: str, text: str, line: int, col: int) -> None:
        self.kind, self.text, self.line, self.col = kind, text, line, col


def _tokenize(text: str, source: str) -> list[_Token]:
    tokens: list[_Token] = []
    pos, line, line_start = 0, 1, 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            what = "unterminated string" if text[pos] in "\"'" else f"unexpected character {text[pos]!r}"
            raise UserError(f"{source}:{line}:{pos - line_start + 1}: {what}")
        kind = m.lastgroup
        assert kind is not None
        if kind != "ws":
            tokens.append(_Token(kind, m.group(), line, pos - line_start + 1))
        newlines = m.group().count("\n")
        if newlines:
            line += newlines
            line_start = m.start() + m.group().rfind("\n") + 1
        pos = m.end()
    return tokens


def _unescape(body: str, where: str) -> str:
    """Decode a C-style escaped string body (as protobuf's text format writes it)."""
    if "\\" not in body:
        return body
    out = bytearray()
    i = 0
    while i < len(body):
        ch = body[i]
        if ch != "\\":
            out += ch.encode("utf-8")
            i += 1
            continue
        i += 1
        if i >= len(body):
            raise UserError(f"{where}: string ends with a lone backslash")
        esc = body[i]
        if esc in _ESCAPES:
            out += _ESCAPES[esc].encode()
            i += 1
        elif esc in "01234567":
            digits = re.match(r"[0-7]{1,3}", body[i:]).group()  # type: ignore[union-attr]
            out.append(int(digits, 8) & 0xFF)
            i += len(digits)
        elif esc in "xX":
            m = re.match(r"[0-9a-fA-F]{1,2}", body[i + 1:])
            if not m:
                raise UserError(f"{where}: bad \\x escape in string")
            out.append(int(m.group(), 16))
            i += 1 + len(m.group())
        elif esc in "uU":
            n = 4 if esc == "u" else 8
            hexdigits = body[i + 1:i + 1 + n]
            if len(hexdigits) != n or not re.fullmatch(r"[0-9a-fA-F]+", hexdigits):
                raise UserError(f"{where}: bad \\{esc} escape in string")
            out += chr(int(hexdigits, 16)).encode("utf-8")
            i += 1 + n
        else:
            raise UserError(f"{where}: unknown escape \\{esc} in string")
    return out.decode("utf-8", errors="surrogateescape")


def _number(text: str) -> int | float:
    t = text.lower()
    if t.lstrip("-").startswith("0x"):
        return int(t, 16)
    if re.fullmatch(r"-?\d+", t):
        return int(t)
    return float(t[:-1] if t.endswith("f") else t)


class _Parser:
    def __init__(self, tokens: list[_Token], source: str) -> None:
        self.tokens, self.source, self.i = tokens, source, 0

    def where(self, tok: _Token | None = None) -> str:
        tok = tok or (self.tokens[self.i] if self.i < len(self.tokens) else None)
        if tok is None:
            return f"{self.source}: at end of file"
        return f"{self.source}:{tok.line}:{tok.col}"

    def peek(self) -> _Token | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def next(self, what: str) -> _Token:
        tok = self.peek()
        if tok is None:
            raise UserError(f"{self.source}: unexpected end of file, expected {what}")
        self.i += 1
        return tok

    def message(self, parent: str, close: str | None) -> dict[str, Any]:
        out: dict[str, Any] = {}
        while True:
            tok = self.peek()
            if tok is None:
                if close is not None:
                    raise UserError(f"{self.source}: unexpected end of file, expected {close!r}")
                return out
            if tok.kind == "punct" and tok.text == close:
                self.i += 1
                return out
            if tok.kind != "ident" or tok.text.startswith("-"):
                raise UserError(f"{self.where(tok)}: expected a field name, got {tok.text!r}")
            self.i += 1
            name = tok.text
            sep = self.peek()
            has_colon = sep is not None and sep.text == ":" and sep.kind == "punct"
            if has_colon:
                self.i += 1
                sep = self.peek()
            if sep is not None and sep.kind == "punct" and sep.text in _CLOSE:
                self.i += 1
                values: list[Any] = [self.message(name, _CLOSE[sep.text])]
            elif not has_colon:
                raise UserError(f"{self.where(sep)}: expected ':' or '{{' after field {name!r}")
            elif sep is not None and sep.kind == "punct" and sep.text == "[":
                self.i += 1
                values = self.list_value(name)
            else:
                values = [self.scalar(name)]
            self.store(out, parent, name, values)
            nxt = self.peek()
            if nxt is not None and nxt.kind == "punct" and nxt.text in ";,":
                self.i += 1

    def list_value(self, name: str) -> list[Any]:
        values: list[Any] = []
        tok = self.peek()
        if tok is not None and tok.text == "]":
            self.i += 1
            return values
        while True:
            tok = self.peek()
            if tok is not None and tok.kind == "punct" and tok.text in _CLOSE:
                self.i += 1
                values.append(self.message(name, _CLOSE[tok.text]))
            else:
                values.append(self.scalar(name))
            tok = self.next("',' or ']'")
            if tok.text == "]":
                return values
            if tok.text != ",":
                raise UserError(f"{self.where(tok)}: expected ',' or ']' in the list of {name!r}, got {tok.text!r}")

    def scalar(self, name: str) -> Any:
        tok = self.next(f"a value for {name!r}")
        if tok.kind == "number":
            return _number(tok.text)
        if tok.kind == "string":
            parts = [tok]
            while (nxt := self.peek()) is not None and nxt.kind == "string":  # "a" "b" concatenates
                parts.append(nxt)
                self.i += 1
            return "".join(_unescape(p.text[1:-1], self.where(p)) for p in parts)
        if tok.kind == "ident":
            low = tok.text.lower()
            if low in ("true", "false"):
                return low == "true"
            if low.lstrip("-") in _SPECIAL_FLOATS:
                value = _SPECIAL_FLOATS[low.lstrip("-")]
                return -value if low.startswith("-") else value
            if tok.text.startswith("-"):
                raise UserError(f"{self.where(tok)}: bad value {tok.text!r} for {name!r}")
            return tok.text  # an enum value, e.g. MAX, SUM, TEST
        raise UserError(f"{self.where(tok)}: expected a value for {name!r}, got {tok.text!r}")

    @staticmethod
    def store(out: dict[str, Any], parent: str, name: str, values: list[Any]) -> None:
        if (name in REPEATED and (parent, name) not in SINGULAR_IN) or (parent, name) in REPEATED_IN:
            out.setdefault(name, [])
            if not isinstance(out[name], list):
                out[name] = [out[name]]
            out[name].extend(values)
        elif name in out or len(values) > 1:
            # a field given more than once keeps every value, in order
            prev = out.pop(name, [])
            out[name] = (prev if isinstance(prev, list) else [prev]) + values
        else:
            out[name] = values[0]


def parse_prototxt(text: str, source: str = "<prototxt>") -> dict[str, Any]:
    """Parse protobuf text format into nested dicts (repeated fields as lists).

    Errors are :class:`~fcnseg.errors.UserError` naming ``source``, line and column.
    """
    parser = _Parser(_tokenize(text, source), source)
    return parser.message("", None)


def read_prototxt(path: str | Path) -> dict[str, Any]:
    """Read and parse a ``.prototxt`` file (net or solver)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: no such prototxt file") from None
    except (IsADirectoryError, UnicodeDecodeError, PermissionError) as exc:
        raise UserError(f"{path}: not a readable text prototxt ({exc.__class__.__name__})") from None
    return parse_prototxt(text, str(path))


# V1LayerParameter.LayerType (legacy ``layers { type: CONVOLUTION }``) -> current type names,
# with their enum numbers as stored in binary caffemodels.
V1_TYPES: dict[str, tuple[int, str]] = {
    "NONE": (0, ""), "ABSVAL": (35, "AbsVal"), "ACCURACY": (1, "Accuracy"), "ARGMAX": (30, "ArgMax"),
    "BNLL": (2, "BNLL"), "CONCAT": (3, "Concat"), "CONTRASTIVE_LOSS": (37, "ContrastiveLoss"),
    "CONVOLUTION": (4, "Convolution"), "DATA": (5, "Data"), "DECONVOLUTION": (39, "Deconvolution"),
    "DROPOUT": (6, "Dropout"), "DUMMY_DATA": (32, "DummyData"), "EUCLIDEAN_LOSS": (7, "EuclideanLoss"),
    "ELTWISE": (25, "Eltwise"), "EXP": (38, "Exp"), "FLATTEN": (8, "Flatten"), "HDF5_DATA": (9, "HDF5Data"),
    "HDF5_OUTPUT": (10, "HDF5Output"), "HINGE_LOSS": (28, "HingeLoss"), "IM2COL": (11, "Im2col"),
    "IMAGE_DATA": (12, "ImageData"), "INFOGAIN_LOSS": (13, "InfogainLoss"),
    "INNER_PRODUCT": (14, "InnerProduct"), "LRN": (15, "LRN"), "MEMORY_DATA": (29, "MemoryData"),
    "MULTINOMIAL_LOGISTIC_LOSS": (16, "MultinomialLogisticLoss"), "MVN": (34, "MVN"),
    "POOLING": (17, "Pooling"), "POWER": (26, "Power"), "RELU": (18, "ReLU"), "SIGMOID": (19, "Sigmoid"),
    "SIGMOID_CROSS_ENTROPY_LOSS": (27, "SigmoidCrossEntropyLoss"), "SILENCE": (36, "Silence"),
    "SOFTMAX": (20, "Softmax"), "SOFTMAX_LOSS": (21, "SoftmaxWithLoss"), "SPLIT": (22, "Split"),
    "SLICE": (33, "Slice"), "TANH": (23, "TanH"), "WINDOW_DATA": (24, "WindowData"),
    "THRESHOLD": (31, "Threshold"),
}


def net_layers(net: dict[str, Any], source: str = "<prototxt>") -> list[dict[str, Any]]:
    """The layers of a parsed net prototxt as current-style ``layer`` dicts.

    Legacy ``layers { type: CONVOLUTION ... }`` entries (V1, e.g. the ILSVRC VGG16
    deploy file) get their type renamed to the current string (``Convolution``);
    their parameter messages have the same names and meaning.
    """
    new, old = net.get("layer", []), net.get("layers", [])
    if new and old:
        raise UserError(f"{source}: mixes 'layer' and legacy 'layers' entries; use one kind")
    out: list[dict[str, Any]] = []
    for i, layer in enumerate(old):
        if not isinstance(layer, dict):
            raise UserError(f"{source}: legacy layer #{i} is not a message")
        if "layer" in layer:
            raise UserError(f"{source}: V0 layer definitions are not supported; "
                            "upgrade the file with Caffe's upgrade_net_proto_text")
        layer = dict(layer)
        kind = layer.get("type", "NONE")
        if isinstance(kind, str) and kind in V1_TYPES:
            layer["type"] = V1_TYPES[kind][1]
        out.append(layer)
    for i, layer in enumerate(new):
        if not isinstance(layer, dict):
            raise UserError(f"{source}: layer #{i} is not a message")
        out.append(layer)
    return out
