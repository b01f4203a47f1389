#!/usr/bin/env python3
"""Writes the committed test corpus of tests/io (python3 standard library only).

  safetensors/valid_*.safetensors   well-formed files, written here from the format's definition
                                    (independently of the C++ writer)
  safetensors/bad_*.safetensors     malformed files: each must give a peft::io_error, never a crash
  adapter_config/valid_*.json       adapter_config.json files in PEFT's layout
  adapter_config/bad_*.json         malformed or mistyped configs

Run from anywhere:  python3 tests/io/data/make_corpus.py   (rewrites every file; deterministic)
The expected error of each bad file is listed in tests/io/safetensors.test.cpp and
tests/io/adapter_config.test.cpp.
"""
import json
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
ST = os.path.join(HERE, "safetensors")
AC = os.path.join(HERE, "adapter_config")

# safetensors dtypes in the reference implementation's order (increasing alignment).
DTYPES = ["BOOL", "U8", "I8", "F8_E5M2", "F8_E4M3", "I16", "U16", "F16", "BF16", "I32", "U32",
          "F32", "F64", "I64", "U64"]


def raw(header_bytes, data=b"", size=None):
    """size prefix + header bytes + data; size defaults to len(header_bytes)."""
    n = len(header_bytes) if size is None else size
    return struct.pack("<Q", n) + header_bytes + data


def hdr(obj):
    return json.dumps(obj, separators=(",", ":")).encode()


def reference(tensors, metadata=None):
    """A file as the reference serializer writes it: tensors sorted by dtype (descending
    alignment) then name, compact JSON with __metadata__ first, spaces up to a multiple of 8.
    tensors: {name: (dtype, shape, bytes)}."""
    order = sorted(tensors, key=lambda k: (-DTYPES.index(tensors[k][0]), k.encode()))
    parts = []
    if metadata is not None:
        parts.append('"__metadata__":' + json.dumps(metadata, separators=(",", ":"), ensure_ascii=False))
    off = 0
    data = b""
    for k in order:
        dt, shape, b = tensors[k]
        parts.append(json.dumps(k, ensure_ascii=False) + ":" + json.dumps(
            {"dtype": dt, "shape": shape, "data_offsets": [off, off + len(b)]}, separators=(",", ":")))
        off += len(b)
        data += b
    h = ("{" + ",".join(parts) + "}").encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    return raw(h, data)


def f32(*v):
    return struct.pack("<%df" % len(v), *v)


def f64(*v):
    return struct.pack("<%dd" % len(v), *v)


def bf16_bits_from_f32(x):
    """bfloat16 bits of a float32 value by round to nearest even on its bit pattern."""
    (u,) = struct.unpack("<I", struct.pack("<f", x))
    if (u & 0x7F800000) == 0x7F800000 and (u & 0x7FFFFF):
        return ((u >> 16) | 0x40) & 0xFFFF  # quiet NaN
    lsb = (u >> 16) & 1
    return ((u + 0x7FFF + lsb) >> 16) & 0xFFFF


def write(path, data):
    with open(path, "wb") as f:
        f.write(data)


def safetensors_corpus():
    os.makedirs(ST, exist_ok=True)
    for name in os.listdir(ST):
        if name.endswith(".safetensors"):
            os.remove(os.path.join(ST, name))
    w = lambda name, data: write(os.path.join(ST, name), data)

    # ---- valid ----
    # The reference implementation's own serialization test vector (header exactly 64 bytes).
    w("valid_tiny_f32.safetensors", reference({"attn.0": ("F32", [1, 2, 3], f32(0, 1, 2, 3, 4, 5))}))
    w("valid_empty.safetensors", reference({}))
    w("valid_mixed.safetensors", reference({
        "a.weight": ("F32", [2, 2], f32(1.5, -2.0, 0.25, 3.0)),
        "b.bias": ("F64", [3], f64(1e-300, -0.0, 12345.678)),
        "c.half": ("F16", [2], struct.pack("<2e", 1.0, -0.5)),
        "d.bf": ("BF16", [2], struct.pack("<2H", 0x3F80, 0xC000)),  # 1.0, -2.0
        "e.idx": ("I64", [2], struct.pack("<2q", -7, 1 << 40)),
        "f.mask": ("BOOL", [3], bytes([1, 0, 1])),
        "g.scalar": ("F32", [], f32(42.0)),
        "h.empty": ("F32", [0, 4], b""),
        "i.u8": ("U8", [2], bytes([0, 255])),
        "j.i32": ("I32", [1], struct.pack("<i", -123456)),
        "k.\u00e9\u4e2d": ("F32", [1], f32(7.0)),  # non-ASCII name (raw UTF-8 in the header)
    }, metadata={"format": "pt", "note": "quote \" backslash \\ tab \t"}))
    # Not the reference layout but valid: header unpadded, __metadata__ in the middle, keys not
    # in offset order (other writers do this; readers must sort by offset).
    body = b'{"z":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"__metadata__":{"k":"v"},' \
           b'"a":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}'
    w("valid_unordered_unpadded.safetensors", raw(body, f32(1.0, 2.0, 3.0)))

    # Conversion references: the source values in F64, their F16 encodings from Python's
    # struct 'e' (IEEE binary16, round half to even) and BF16 encodings by round-to-nearest-even
    # on the float32 bits (the sources are exact float32 values).
    src = [0.0, -0.0, 1.0, -1.0, 0.1, 1.0 / 3.0, 65504.0, 65519.0, 6.103515625e-05,  # min normal
           5.960464477539063e-08,  # min subnormal
           2.9802322387695312e-08,  # half the min subnormal: ties to even -> 0
           4.470348358154297e-08,  # 0.75 min subnormal -> min subnormal
           1.0009765625, 1.00048828125,  # 1 + 2^-10 (exact), 1 + 2^-11 (tie -> 1)
           1.00146484375,  # 1 + 3*2^-11 (tie -> up to even 1 + 2^-9)
           3.14159274101257324, -2.71828174591064453, 1e-3, 1234.5, -7.62939453125e-06,
           1.00390625, 1.01171875,  # bf16 ties: 1 + 2^-8 -> 1, 1 + 3*2^-8 -> 1 + 2^-6
           255.5, 3.0e38]
    f16 = []
    for x in src:
        try:
            f16.append(struct.pack("<e", x))
        except OverflowError:
            f16.append(struct.pack("<H", 0x7C00 if x > 0 else 0xFC00))  # rounds to +-inf
    f32src = [struct.unpack("<f", struct.pack("<f", x))[0] for x in src]
    bf = [struct.pack("<H", bf16_bits_from_f32(x)) for x in f32src]
    w("valid_conversions.safetensors", reference({
        "src_f64": ("F64", [len(src)], f64(*src)),
        "src_f32": ("F32", [len(src)], f32(*f32src)),
        "f16_from_f64": ("F16", [len(src)], b"".join(f16)),
        "bf16_from_f32": ("BF16", [len(src)], b"".join(bf)),
    }))

    # ---- malformed ----
    ok = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
    d8 = f32(1.0, 2.0)
    w("bad_file_too_short.safetensors", b"\x05\x00\x00\x00\x00")
    w("bad_header_size_exceeds_file.safetensors", raw(b'{"a":1}', size=200))
    w("bad_header_size_over_limit.safetensors", raw(b"{}      ", size=100_000_001))
    w("bad_header_size_max_u64.safetensors", raw(b"{}      ", size=0xFFFFFFFFFFFFFFFF))
    w("bad_invalid_json.safetensors", raw(b'{"a":{"dtype":"F32","shape":[2],', d8))
    w("bad_trailing_garbage.safetensors", raw(b'{} x', b""))
    w("bad_header_not_object.safetensors", raw(b"[1,2]   "))
    w("bad_non_utf8_name.safetensors", raw(b'{"\xff\xfe":' + hdr(ok) + b"}", d8))
    w("bad_overlong_utf8.safetensors", raw(b'{"\xc0\xaf":' + hdr(ok) + b"}", d8))
    w("bad_duplicate_tensor.safetensors",
      raw(b'{"a":' + hdr(ok) + b',"a":' + hdr({"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}) + b"}",
          d8 + d8))
    w("bad_duplicate_field.safetensors",
      raw(b'{"a":{"dtype":"F32","dtype":"F64","shape":[2],"data_offsets":[0,8]}}', d8))
    w("bad_unknown_dtype.safetensors", raw(hdr({"a": {"dtype": "F33", "shape": [2], "data_offsets": [0, 8]}}), d8))
    w("bad_dtype_not_string.safetensors", raw(hdr({"a": {"dtype": 32, "shape": [2], "data_offsets": [0, 8]}}), d8))
    w("bad_unknown_field.safetensors", raw(hdr({"a": dict(ok, extra=1)}), d8))
    w("bad_missing_offsets.safetensors", raw(hdr({"a": {"dtype": "F32", "shape": [2]}}), d8))
    w("bad_entry_not_object.safetensors", raw(hdr({"a": [0, 8]}), d8))
    w("bad_negative_dim.safetensors", raw(hdr({"a": {"dtype": "F32", "shape": [-1, 2], "data_offsets": [0, 8]}}), d8))
    w("bad_float_dim.safetensors", raw(b'{"a":{"dtype":"F32","shape":[2.0],"data_offsets":[0,8]}}', d8))
    w("bad_dim_beyond_u64.safetensors",
      raw(b'{"a":{"dtype":"F32","shape":[18446744073709551616],"data_offsets":[0,8]}}', d8))
    w("bad_huge_dims.safetensors",  # fits in 64 bits, far beyond the file
      raw(hdr({"a": {"dtype": "F32", "shape": [1000000, 1000000], "data_offsets": [0, 4000000000000]}}), d8))
    w("bad_dims_product_overflow.safetensors",  # 2^40 * 2^40 elements
      raw(hdr({"a": {"dtype": "F32", "shape": [1 << 40, 1 << 40], "data_offsets": [0, 8]}}), d8))
    w("bad_zero_dim_overflow.safetensors",  # empty, but its other extents overflow (and its strides would)
      raw(hdr({"a": {"dtype": "F32", "shape": [0, 1 << 40, 1 << 40], "data_offsets": [0, 0]}}), b""))
    w("bad_bytes_overflow.safetensors",  # 2^62 elements fit, 2^62 * 4 bytes do not
      raw(hdr({"a": {"dtype": "F32", "shape": [1 << 62], "data_offsets": [0, 8]}}), d8))
    w("bad_offsets_out_of_range.safetensors", raw(hdr({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 1000]}}), d8))
    w("bad_offsets_overflow.safetensors",
      raw(hdr({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0xFFFFFFFFFFFFFFF8, 0xFFFFFFFFFFFFFFFF]}}), d8))
    w("bad_offsets_reversed.safetensors", raw(hdr({"a": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}}), d8))
    w("bad_offsets_arity.safetensors", raw(hdr({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0]}}), d8))
    w("bad_byte_count_mismatch.safetensors",
      raw(hdr({"a": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 12]}}), f32(1, 2, 3)))
    w("bad_overlap.safetensors",
      raw(hdr({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
               "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}}), f32(*range(6))))
    w("bad_gap.safetensors",
      raw(hdr({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
               "b": {"dtype": "F32", "shape": [2], "data_offsets": [16, 24]}}), f32(*range(6))))
    w("bad_start_not_zero.safetensors", raw(hdr({"a": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}), f32(0, 1, 2)))
    w("bad_trailing_bytes.safetensors", raw(hdr({"a": ok}), d8 + b"\x00\x00\x00\x00"))
    w("bad_metadata_non_string.safetensors", raw(hdr({"__metadata__": {"format": 1}, "a": ok}), d8))
    w("bad_metadata_not_object.safetensors", raw(hdr({"__metadata__": "pt", "a": ok}), d8))
    w("bad_deep_nesting.safetensors", raw(b'{"a":{"dtype":"F32","shape":[[[[2]]]],"data_offsets":[0,8]}}', d8))
    w("bad_truncated_data.safetensors", raw(hdr({"a": ok}), d8)[:-3])  # data buffer shorter than the header says


def adapter_config_corpus():
    os.makedirs(AC, exist_ok=True)
    for name in os.listdir(AC):
        if name.endswith(".json"):
            os.remove(os.path.join(AC, name))
    def w(name, obj=None, text=None):
        data = text if text is not None else json.dumps(obj, indent=2, sort_keys=True).encode()
        write(os.path.join(AC, name), data)

    # A LoraConfig as PEFT 0.19 writes it (its full key set).
    lora = {
        "alora_invocation_tokens": None, "alpha_pattern": {}, "arrow_config": None, "auto_mapping": None,
        "base_model_name_or_path": "toy/mlp", "bias": "none", "corda_config": None,
        "ensure_weight_tying": False, "eva_config": None, "exclude_modules": None, "fan_in_fan_out": False,
        "inference_mode": True, "init_lora_weights": True, "layer_replication": None, "layers_pattern": None,
        "layers_to_transform": None, "loftq_config": {}, "lora_alpha": 16, "lora_bias": False,
        "lora_dropout": 0.05, "megatron_config": None, "megatron_core": "megatron.core",
        "modules_to_save": None, "peft_type": "LORA", "peft_version": "0.19.1", "qalora_group_size": 16, "r": 8,
        "rank_pattern": {}, "revision": None, "target_modules": ["v_proj", "q_proj"], "target_parameters": None,
        "task_type": "CAUSAL_LM", "trainable_token_indices": None, "use_dora": False, "use_qalora": False,
        "use_rslora": False,
    }
    w("valid_lora_peft.json", lora)
    w("valid_dora_rslora_patterns.json", dict(lora, use_dora=True, use_rslora=True, r=4, lora_alpha=8.5,
                                              rank_pattern={"fc1": 2, "layers\\.1\\.q_proj": 6},
                                              alpha_pattern={"fc1": 3}, modules_to_save=["classifier"],
                                              init_lora_weights="gaussian"))
    w("valid_regex_targets.json", dict(lora, target_modules=".*\\.(q|v)_proj", task_type=None))
    w("valid_vera.json", {
        "auto_mapping": None, "base_model_name_or_path": "toy/mlp", "bias": "none", "d_initial": 0.1,
        "fan_in_fan_out": False, "inference_mode": True, "init_weights": True, "layers_pattern": None,
        "layers_to_transform": None, "modules_to_save": None, "peft_type": "VERA", "projection_prng_key": 0,
        "r": 256, "revision": None, "save_projection": True, "target_modules": ["q_proj", "v_proj"],
        "task_type": None, "vera_dropout": 0.0})
    w("valid_unicode.json", dict(lora, base_model_name_or_path="mod\u00e8le/\u6a21\u578b"))

    w("bad_r_string.json", dict(lora, r="8"))
    w("bad_r_zero.json", dict(lora, r=0))
    w("bad_r_negative.json", dict(lora, r=-4))
    w("bad_r_float.json", dict(lora, r=8.5))
    w("bad_alpha_string.json", dict(lora, lora_alpha="16"))
    w("bad_target_modules_number.json", dict(lora, target_modules=5))
    w("bad_target_modules_list_of_ints.json", dict(lora, target_modules=["q_proj", 3]))
    w("bad_rank_pattern_value.json", dict(lora, rank_pattern={"q_proj": 4.5}))
    w("bad_alpha_pattern_value.json", dict(lora, alpha_pattern={"q_proj": "x"}))
    w("bad_use_dora_string.json", dict(lora, use_dora="true"))
    w("bad_modules_to_save_string.json", dict(lora, modules_to_save="classifier"))
    w("bad_peft_type_unknown.json", dict(lora, peft_type="IA3"))
    w("bad_peft_type_missing.json", {k: v for k, v in lora.items() if k != "peft_type"})
    w("bad_vera_prng_key_negative.json", {"peft_type": "VERA", "r": 4, "target_modules": ["q"],
                                          "projection_prng_key": -1})
    w("bad_not_object.json", text=b'["LORA", 8]')
    w("bad_invalid_json.json", text=b'{"peft_type": "LORA", "r": 8,}')
    w("bad_duplicate_key.json", text=b'{"peft_type": "LORA", "r": 8, "r": 16}')
    w("bad_non_utf8.json", text=b'{"peft_type": "LORA", "base_model_name_or_path": "\xff"}')
    w("bad_deep_nesting.json", text=b'{"peft_type": "LORA", "x": ' + b"[" * 100 + b"]" * 100 + b"}")
    w("bad_empty.json", text=b"")


if __name__ == "__main__":
    safetensors_corpus()
    adapter_config_corpus()
