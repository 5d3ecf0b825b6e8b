"""Checks a consolidated safetensors file with the reference library.

usage: check_safetensors.py FILE EXPECTED_JSON fp32|fp16

EXPECTED_JSON maps each tensor name to {"shape": [...], "values": [...]}
(fp32 values before conversion). Exit 0 when every tensor loads with the
expected dtype, shape and values and no other tensor is present.
"""
import json
import sys

import numpy as np
from safetensors.numpy import load_file


def main():
    path, expected_path, dtype = sys.argv[1:4]
    want_dtype = {"fp32": np.float32, "fp16": np.float16}[dtype]
    with open(expected_path) as f:
        expected = json.load(f)
    tensors = load_file(path)
    if set(tensors) != set(expected):
        sys.exit(f"tensors {sorted(tensors)} != expected {sorted(expected)}")
    for name, want in expected.items():
        got = tensors[name]
        if got.dtype != want_dtype:
            sys.exit(f"{name}: dtype {got.dtype}, expected {want_dtype}")
        if list(got.shape) != want["shape"]:
            sys.exit(f"{name}: shape {list(got.shape)}, expected {want['shape']}")
        ref = np.array(want["values"], dtype=np.float32).astype(want_dtype).reshape(want["shape"])
        if not np.array_equal(got, ref):
            sys.exit(f"{name}: values differ: {got.ravel()[:8]} vs {ref.ravel()[:8]}")
    print(f"{path}: {len(tensors)} tensors match")


if __name__ == "__main__":
    main()
