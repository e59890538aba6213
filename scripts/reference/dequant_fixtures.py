"""Write test/fixtures/ggml-dequant.json: GGUF tensor bytes and their float32 values per the `gguf` package.

    python3 scripts/reference/dequant_fixtures.py [--out test/fixtures/ggml-dequant.json] [--gguf PATH]

The reference is `gguf.quants.dequantize(data, qtype)` from the `gguf` package 0.19.0 (PyPI, maintained
with llama.cpp; numpy only). test/node/ggml-quants.test.ts checks src/model/ggml-quants.ts against it bit
for bit. Cases, for each of F32 F16 Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 Q4_K Q5_K Q6_K BF16:

- origin "synthetic": seeded random bytes, with every f16 scale field (d, m, dmin) overwritten by a finite
  value: random bytes would often be NaN or inf there, and one NaN scale hides every other bug in the block.
  The scales cycle through regimes per block (ordinary, negative, f16-subnormal, large, zero) so that
  exponent handling and the f32 rounding of d*q+m are exercised. F32/F16/BF16 keep raw random bytes
  (NaN payloads included) because those types are pure bit conversions; F16 adds a sweep of 4096 bit
  patterns covering every exponent, subnormals, inf and NaN.
- origin "quantized": gguf.quants.quantize of seeded random floats, for the types it can quantize
  (F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0; 0.19.0 has no K-quant quantizer).
- origin "shared-gguf:<tensor>": real blocks of /work/shared/models/smollm2-135m-instruct/
  SmolLM2-135M-Instruct.Q4_1.gguf: the first 8 and 8 middle blocks of blk.0.attn_q.weight (Q4_1) and
  token_embd.weight (Q8_0), and the first 64 values of blk.0.attn_norm.weight (F32). Skipped, with a
  warning, when the file is absent.

Format: {"source", "gguf_version", "numpy_version", "type_sizes": {id: [block values, block bytes]},
"cases": [{name, type, type_name, origin, n_values, data_b64, expected_f32_b64}]}; expected values are
little-endian float32. Deterministic: rerunning gives the same file.
"""

from __future__ import annotations

import argparse
import base64
import importlib.metadata
import json
import os
import sys

import numpy as np
import gguf
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType as T

REPO = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
DEFAULT_OUT = os.path.join(REPO, "test", "fixtures", "ggml-dequant.json")
DEFAULT_GGUF = "/work/shared/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf"

TYPES = ["F32", "F16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K", "BF16"]
QUANTIZABLE = ["F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"]

# Byte offsets of the f16 scale fields inside one block (ggml-quants.h block_* structs).
SCALE_FIELDS = {
    "Q4_0": [0],
    "Q4_1": [0, 2],  # d, m
    "Q5_0": [0],
    "Q5_1": [0, 2],
    "Q8_0": [0],
    "Q4_K": [0, 2],  # d, dmin
    "Q5_K": [0, 2],
    "Q6_K": [208],  # d is the last field
}


def b64(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a).tobytes()).decode("ascii")


def reference(data: np.ndarray, qtype: T) -> np.ndarray:
    out = gguf.quants.dequantize(data, qtype)
    assert out.dtype == np.float32, (qtype.name, out.dtype)
    return out.reshape(-1)


def case(name: str, type_name: str, origin: str, data: np.ndarray) -> dict:
    qtype = T[type_name]
    block_values, block_bytes = GGML_QUANT_SIZES[qtype]
    data = np.ascontiguousarray(data, dtype=np.uint8).reshape(-1)
    assert data.size % block_bytes == 0, (name, data.size)
    n_values = data.size // block_bytes * block_values
    expected = reference(data, qtype)
    assert expected.size == n_values, (name, expected.size, n_values)
    return {
        "name": name,
        "type": int(qtype.value),
        "type_name": type_name,
        "origin": origin,
        "n_values": int(n_values),
        "data_b64": b64(data),
        "expected_f32_b64": b64(expected.astype("<f4")),
    }


def sane_scale(rng: np.random.Generator, regime: int) -> np.float16:
    """A finite f16 scale; regime picks which part of the f16 range it comes from."""
    r = regime % 5
    if r == 0:  # ordinary weight scales
        v = 10.0 ** rng.uniform(-4, -1)
    elif r == 1:  # negative (Q4_0/Q8_0 d is max/-8 etc.; Q4_1 m is usually negative)
        v = -(10.0 ** rng.uniform(-3, 0))
    elif r == 2:  # f16 subnormal (below 2^-14): the widening must normalize it
        v = rng.integers(1, 1024) * 2.0**-24 * rng.choice([-1, 1])
    elif r == 3:  # large, so d*q+m rounds at a coarse f32 ulp
        v = 10.0 ** rng.uniform(1, 4) * rng.choice([-1, 1])
    else:  # zero (or negative zero)
        v = -0.0 if rng.integers(2) else 0.0
    h = np.float16(v)
    assert np.isfinite(h)
    return h


def synthetic_blocks(type_name: str, n_blocks: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    _, block_bytes = GGML_QUANT_SIZES[T[type_name]]
    blocks = rng.integers(0, 256, size=(n_blocks, block_bytes), dtype=np.uint8)
    for b in range(n_blocks):
        for k, off in enumerate(SCALE_FIELDS[type_name]):
            # The first field (d) walks the regimes block by block; the second (m/dmin) is offset by 2.
            h = sane_scale(rng, b + 2 * k)
            blocks[b, off : off + 2] = np.frombuffer(h.tobytes(), dtype=np.uint8)
    return blocks


def random_floats(n: int, seed: int) -> np.ndarray:
    """Gaussian weights with a few outliers and one constant 32-run, the inputs that stress block scaling."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(n) * 0.05).astype(np.float32)
    idx = rng.integers(0, n, size=max(1, n // 64))
    x[idx] = rng.uniform(-4, 4, size=idx.size).astype(np.float32)
    if n >= 64:
        x[32:64] = np.float32(0.125)
    return x


def f16_sweep() -> np.ndarray:
    # 4096 of the 65536 patterns: every 16th, with the low 4 mantissa bits varying too, so all exponents
    # (0 = zero/subnormal, 31 = inf/NaN) and both signs appear.
    i = np.arange(4096, dtype=np.uint32)
    return (i * 16 + (i % 16)).astype("<u2").view(np.uint8)


def synthetic_cases() -> list[dict]:
    cases = []
    for seed, type_name in enumerate(TYPES, start=1):
        block_values, block_bytes = GGML_QUANT_SIZES[T[type_name]]
        if type_name in ("F32", "F16", "BF16"):
            rng = np.random.default_rng(seed)
            raw = rng.integers(0, 256, size=256 * block_bytes, dtype=np.uint8)
            cases.append(case(f"{type_name} random bytes", type_name, "synthetic", raw))
            if type_name == "F16":
                cases.append(case("F16 bit-pattern sweep", type_name, "synthetic", f16_sweep()))
            continue
        n_blocks = 5 if block_values == 256 else 10  # covers every scale regime at least once
        blocks = synthetic_blocks(type_name, n_blocks, seed)
        cases.append(case(f"{type_name} random blocks", type_name, "synthetic", blocks))
    return cases


def quantized_cases() -> list[dict]:
    cases = []
    for seed, type_name in enumerate(QUANTIZABLE, start=100):
        block_values, _ = GGML_QUANT_SIZES[T[type_name]]
        n = 4 * max(block_values, 32)
        x = random_floats(n, seed).reshape(1, n)
        q = gguf.quants.quantize(x, T[type_name])
        data = np.ascontiguousarray(q).view(np.uint8).reshape(-1)
        cases.append(case(f"{type_name} quantized from random floats", type_name, "quantized", data))
    return cases


def tensor_blocks(tensor, ranges: list[tuple[int, int]]) -> np.ndarray:
    """Blocks [start, start+count) of a tensor's byte rows, concatenated."""
    qtype = T(int(tensor.tensor_type))
    _, block_bytes = GGML_QUANT_SIZES[qtype]
    flat = np.ascontiguousarray(tensor.data).view(np.uint8).reshape(-1)
    return np.concatenate([flat[s * block_bytes : (s + c) * block_bytes] for s, c in ranges])


def check_against_full_rows(tensor, start: int, count: int, got: np.ndarray) -> None:
    """The slice's values equal the package's dequantization of the whole rows around it (no context needed)."""
    qtype = T(int(tensor.tensor_type))
    block_values, block_bytes = GGML_QUANT_SIZES[qtype]
    rows = np.ascontiguousarray(tensor.data).view(np.uint8)  # [rows, row bytes]
    values_per_row = rows.shape[-1] // block_bytes * block_values
    first, last = start * block_values, (start + count) * block_values
    r0, r1 = first // values_per_row, (last - 1) // values_per_row + 1
    full = reference(rows[r0:r1].reshape(-1), qtype)
    want = full[first - r0 * values_per_row : last - r0 * values_per_row]
    assert np.array_equal(want.view(np.uint32), got.view(np.uint32)), tensor.name


def shared_cases(path: str) -> list[dict]:
    if not os.path.exists(path):
        print(f"warning: {path} not found; no shared-gguf cases", file=sys.stderr)
        return []
    reader = gguf.GGUFReader(path)
    by_name = {t.name: t for t in reader.tensors}
    cases = []
    for name, want_type in (("blk.0.attn_q.weight", "Q4_1"), ("token_embd.weight", "Q8_0")):
        t = by_name[name]
        assert T(int(t.tensor_type)).name == want_type, (name, t.tensor_type)
        block_values, _ = GGML_QUANT_SIZES[T[want_type]]
        n_blocks = int(t.n_elements) // block_values
        for label, start in (("first", 0), ("middle", n_blocks // 2)):
            data = tensor_blocks(t, [(start, 8)])
            c = case(f"{name} {label} 8 blocks (block {start})", want_type, f"shared-gguf:{name}", data)
            check_against_full_rows(t, start, 8, np.frombuffer(base64.b64decode(c["expected_f32_b64"]), dtype="<f4"))
            cases.append(c)
    norm = by_name["blk.0.attn_norm.weight"]
    assert T(int(norm.tensor_type)) == T.F32
    data = np.ascontiguousarray(norm.data).view(np.uint8).reshape(-1)[: 64 * 4]
    cases.append(case("blk.0.attn_norm.weight first 64 values", "F32", "shared-gguf:blk.0.attn_norm.weight", data))
    return cases


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--gguf", default=DEFAULT_GGUF)
    args = ap.parse_args()

    version = importlib.metadata.version("gguf")
    if version != "0.19.0":
        print(f"warning: gguf {version}, the fixtures were made with 0.19.0", file=sys.stderr)
    cases = synthetic_cases() + quantized_cases() + shared_cases(args.gguf)
    fixture = {
        "source": f"gguf {version} gguf.quants.dequantize",
        "gguf_version": version,
        "numpy_version": np.__version__,
        "type_sizes": {str(T[n].value): list(GGML_QUANT_SIZES[T[n]]) for n in TYPES},
        "cases": cases,
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(fixture, f, indent=1)
        f.write("\n")
    size = os.path.getsize(args.out)
    print(f"wrote {args.out}: {len(cases)} cases, {size} bytes")


if __name__ == "__main__":
    main()
