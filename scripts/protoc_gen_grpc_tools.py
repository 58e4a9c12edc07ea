"""protoc plugin adapter: grpcio-tools' built-in Python generators as a plugin buf can run.

Usage in buf.gen.yaml: `local: [python, scripts/protoc_gen_grpc_tools.py, <generator>]` where
<generator> is `python` or `grpc_python`.

grpcio-tools builds its generators into its bundled protoc (`--python_out`, `--grpc_python_out`)
and ships no `protoc-gen-*` executables, while buf's `protoc_builtin` only proxies protoc's own
languages and knows nothing of `grpc_python`. This adapter reads buf's CodeGeneratorRequest,
hands the descriptors to grpcio-tools' protoc through `--descriptor_set_in`, and returns what it
wrote, so the generators are exactly the ones pinned in pyproject.toml (grpcio-tools).

buf fills in every field's default `json_name`; protoc compiling .proto sources leaves it unset.
The `_pb2.py` files embed the serialized descriptor, so defaults are cleared first: the output is
then byte-for-byte what `python -m grpc_tools.protoc` writes from the sources.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path

from google.protobuf import descriptor_pb2
from google.protobuf.compiler import plugin_pb2
from grpc_tools import protoc

GENERATORS = {"python", "grpc_python"}


def default_json_name(name: str) -> str:
    """protoc's ToJsonName: drop underscores, capitalise the letter after each."""
    out: list[str] = []
    upper = False
    for c in name:
        if c == "_":
            upper = True
        else:
            out.append(c.upper() if upper else c)
            upper = False
    return "".join(out)


def clear_default_json_names(messages: Iterable[descriptor_pb2.DescriptorProto]) -> None:
    for m in messages:
        for f in [*m.field, *m.extension]:
            if f.HasField("json_name") and f.json_name == default_json_name(f.name):
                f.ClearField("json_name")
        clear_default_json_names(m.nested_type)


def main() -> int:
    generator = sys.argv[1] if len(sys.argv) > 1 else ""
    response = plugin_pb2.CodeGeneratorResponse(
        supported_features=plugin_pb2.CodeGeneratorResponse.FEATURE_PROTO3_OPTIONAL
    )
    if generator not in GENERATORS:
        response.error = f"usage: protoc_gen_grpc_tools.py {{{'|'.join(sorted(GENERATORS))}}}"
        sys.stdout.buffer.write(response.SerializeToString())
        return 0
    request = plugin_pb2.CodeGeneratorRequest.FromString(sys.stdin.buffer.read())
    files = list(request.proto_file)
    for f in files:
        clear_default_json_names(f.message_type)
        for ext in f.extension:
            if ext.HasField("json_name") and ext.json_name == default_json_name(ext.name):
                ext.ClearField("json_name")
    with tempfile.TemporaryDirectory() as tmp:
        descriptors = Path(tmp, "descriptors.binpb")
        descriptors.write_bytes(descriptor_pb2.FileDescriptorSet(file=files).SerializeToString())
        out = Path(tmp, "out")
        out.mkdir()
        opt = f"{request.parameter}:" if request.parameter else ""
        code = protoc.main(
            [
                "grpc_tools.protoc",
                f"--descriptor_set_in={descriptors}",
                f"--{generator}_out={opt}{out}",
                *request.file_to_generate,
            ]
        )
        if code != 0:
            response.error = f"grpc_tools.protoc --{generator}_out exited {code}"
        else:
            for path in sorted(out.rglob("*")):
                if path.is_file():
                    response.file.add(
                        name=path.relative_to(out).as_posix(), content=path.read_text()
                    )
    sys.stdout.buffer.write(response.SerializeToString())
    return 0


if __name__ == "__main__":
    sys.exit(main())
