"""Reading and extending serialized ONNX models without the ``onnx`` package (protobuf wire format).

Only what protodb needs: the names of a graph's outputs, and adding an intermediate tensor as an
output so onnxruntime returns it.
"""

from __future__ import annotations

def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def with_extra_output(model_bytes: bytes, tensor_name: str) -> bytes:
    """Serialized ONNX ModelProto with ``tensor_name`` added as a graph output.

    Protobuf merges repeated occurrences of an embedded message field, so appending
    ``ModelProto.graph (7) { GraphProto.output (12) { ValueInfoProto.name (1) } }`` adds one output
    without parsing the model (the ``onnx`` package is not a dependency); onnxruntime infers its type.
    """
    def field(number: int, payload: bytes) -> bytes:
        return _varint(number << 3 | 2) + _varint(len(payload)) + payload

    return model_bytes + field(7, field(12, field(1, tensor_name.encode("utf-8"))))


def _read_varint(buf: memoryview, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def _proto_fields(buf: memoryview, wanted: int) -> list[memoryview]:
    """Payloads of the length-delimited field number ``wanted`` of a serialized protobuf message."""
    found, pos = [], 0
    while pos < len(buf):
        tag, pos = _read_varint(buf, pos)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            _, pos = _read_varint(buf, pos)
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        elif wire == 2:
            size, pos = _read_varint(buf, pos)
            if number == wanted:
                found.append(buf[pos:pos + size])
            pos += size
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
    return found


def graph_output_names(model_bytes: bytes) -> set[str]:
    """Names of the graph outputs of a serialized ONNX ModelProto (graph = 7, output = 12, name = 1)."""
    names = set()
    for graph in _proto_fields(memoryview(model_bytes), 7):
        for value_info in _proto_fields(graph, 12):
            names.update(bytes(n).decode("utf-8") for n in _proto_fields(value_info, 1))
    return names
