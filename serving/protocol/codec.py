"""Parsing protocol payloads into named arrays, and model outputs into protocol responses.

The framing of V1, V2 REST (JSON and the binary extension) and V2 gRPC. Whether a batch fits the model is
decided in one place, :func:`pillars.components.task.contract.check_inputs`, which
:meth:`pillars.serving.model.PillarsModel.preprocess` applies to every :class:`Batch` this module returns,
whatever protocol it came in.

What is refused here is what must be refused before the tensor data is decoded, or is about the wire
format itself: a body longer than any request within ``max_rows`` can be (for the REST binary extension
the JSON header at the front of the body is all that is parsed first), more than ``max_rows`` rows, and
(:func:`pillars.serving.protocol.tensors.check_declared`) the declared names, datatypes, shapes and row counts,
judged by the contract's own rules so that a request of the wrong shape is refused on its header alone
in the same words as the full check. Binary numeric tensors are then viewed with :func:`numpy.frombuffer`
and JSON numbers converted by numpy in one call; ``BYTES`` elements (JSON strings, the binary extension's
4-byte little-endian length-prefixed elements, gRPC ``bytes_contents`` or raw) are read one by one, at
most ``rows x values`` of them.

A model with a single input takes one tensor under any name (as KServe's own runtimes do); a model with
several inputs takes them by name. V1 ``{"instances": [...]}``: a single-input model takes rows (lists
of numbers, objects keyed by the input's ``labels`` for a table, or plain strings for one ``BYTES``
input); a model with several inputs takes objects keyed by input name, each input given in every
instance or in none.

Bad input is a :class:`pillars.components.task.contract.InputError` (HTTP 400, gRPC INVALID_ARGUMENT) naming
the input and what is wrong; too many rows, or a body larger than any request within ``max_rows`` can
be, is :class:`pillars.serving.errors.TooManyRows` (413, RESOURCE_EXHAUSTED).

The codec lives in one module per protocol, re-exported here as one namespace (``codec.decode_v1``,
``codec.Batch``, ...): :mod:`~pillars.serving.protocol.wire` (what they share: :class:`Batch`, JSON limits and
parsing, tensor metadata, the V2 response), :mod:`~pillars.serving.protocol.v1`,
:mod:`~pillars.serving.protocol.v2_rest` and :mod:`~pillars.serving.protocol.v2_grpc`.
"""

from __future__ import annotations

from pillars.serving.protocol.v1 import decode_v1, encode_v1
from pillars.serving.protocol.v2_grpc import (
    GRPC_BYTES_PER_VALUE,
    GRPC_CONTENTS,
    decode_grpc,
    grpc_message_limit,
    grpc_tensor_metadata,
)
from pillars.serving.protocol.v2_rest import (
    RestTensor,
    V2Header,
    check_v2_header,
    decode_v2_data,
    json_part_length,
    read_binary_request,
)
from pillars.serving.protocol.wire import (
    JSON_BYTES_PER_STRING_BYTE,
    JSON_BYTES_PER_VALUE,
    JSON_OVERHEAD_BYTES,
    Batch,
    encode_v2,
    json_body_limit,
    loads,
    parse_json,
    plain_strings,
    tensor_metadata,
    tensor_parameters,
)

__all__ = [
    "GRPC_BYTES_PER_VALUE", "GRPC_CONTENTS", "JSON_BYTES_PER_STRING_BYTE", "JSON_BYTES_PER_VALUE",
    "JSON_OVERHEAD_BYTES", "Batch", "RestTensor", "V2Header", "check_v2_header", "decode_grpc", "decode_v1",
    "decode_v2_data", "encode_v1", "encode_v2", "grpc_message_limit", "grpc_tensor_metadata", "json_body_limit",
    "json_part_length", "loads", "parse_json", "plain_strings", "read_binary_request", "tensor_metadata",
    "tensor_parameters",
]
