"""Caffe interoperability without Caffe: prototxt and caffemodel reading, a prototxt
interpreter (:class:`Net`) and weight conversion into fcnseg's models."""
from __future__ import annotations

from .caffemodel import Blob, CaffeLayer, iter_caffemodel, read_caffemodel, write_caffemodel
from .convert import convert_caffemodel, export_caffemodel
from .net import Net
from .prototxt import net_layers, parse_prototxt, read_prototxt

__all__ = ["Blob", "CaffeLayer", "Net", "convert_caffemodel", "export_caffemodel", "iter_caffemodel", "net_layers",
           "parse_prototxt", "read_caffemodel",
           "read_prototxt", "write_caffemodel"]
