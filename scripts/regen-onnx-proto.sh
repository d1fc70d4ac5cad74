#!/usr/bin/env bash
# Regenerates the committed prost code for ONNX (src/onnx/proto.rs) from proto/onnx.proto.
# Needs protoc (Debian: apt-get install protobuf-compiler). To update the schema, copy onnx.proto
# from the `onnx` Python package (site-packages/onnx/onnx.proto) into proto/ first.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo run --quiet --manifest-path tools/gen-proto/Cargo.toml
echo "regenerated src/onnx/proto.rs"
