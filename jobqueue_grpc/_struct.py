"""google.protobuf.Struct to plain Python, shared by the server and the SDK.

Faster than json_format.MessageToDict, and numbers stay floats as JSON has them.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import struct_pb2


def plain(value: struct_pb2.Value) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "struct_value":
        return to_dict(value.struct_value)
    if kind == "list_value":
        return [plain(v) for v in value.list_value.values]
    if kind in (None, "null_value"):
        return None
    return getattr(value, kind)


def to_dict(struct: struct_pb2.Struct) -> dict[str, Any]:
    return {k: plain(v) for k, v in struct.fields.items()}
