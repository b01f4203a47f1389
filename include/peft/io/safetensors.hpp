#pragma once
// safetensors (Hugging Face): the tensor file format of PEFT adapters and transformers models.
//   [8 bytes] N, the header size, little-endian u64
//   [N bytes] UTF-8 JSON: {"__metadata__": {str: str}, "<name>": {"dtype": "F32",
//             "shape": [2, 3], "data_offsets": [begin, end]}, ...}, padded with spaces
//   [rest]    the data buffer; offsets are relative to its start, little-endian, row-major
// Reading treats every byte as hostile: the header size is bounded (100 MB, as the reference
// implementation, and the file size), the JSON must be valid UTF-8 with no duplicate keys,
// only known fields and dtypes, shapes are non-negative integers whose byte count is computed
// with overflow checks and must equal end - begin, and the tensors must tile the data buffer
// exactly (sorted by offset: no gap, no overlap, no trailing bytes). Every failure is an
// io_error naming the file and, where there is one, the tensor.
// Writing matches the reference serializer byte for byte: tensors sorted by dtype alignment
// (descending) then name, compact JSON with "__metadata__" first, header padded with spaces to
// a multiple of 8 so every tensor is aligned; the file is written atomically.
#include <algorithm>
#include <bit>
#include <concepts>
#include <cstdint>
#include <cstring>
#include <limits>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "peft/core/config.hpp"
#include "peft/core/error.hpp"
#include "peft/core/tensor.hpp"
#include "peft/detail/half.hpp"
#include "peft/io/detail/util.hpp"

namespace peft::io {

// safetensors' dtypes in the reference implementation's order (increasing alignment); the
// writer sorts by it.
enum class dtype : std::uint8_t { BOOL, U8, I8, F8_E5M2, F8_E4M3, I16, U16, F16, BF16, I32, U32, F32, F64, I64, U64 };

PEFT_INLINE std::size_t dtype_size(dtype t);
PEFT_INLINE const char* dtype_name(dtype t);
PEFT_INLINE std::optional<dtype> dtype_from_name(std::string_view s);
inline bool is_float_dtype(dtype t) {
  return t == dtype::F16 || t == dtype::BF16 || t == dtype::F32 || t == dtype::F64;
}
// F32 for float, F64 for double.
template <std::floating_point T>
constexpr dtype dtype_of() {
  static_assert(std::numeric_limits<T>::is_iec559 && (sizeof(T) == 4 || sizeof(T) == 8),
                "dtype_of: only float and double map to a safetensors dtype");
  return sizeof(T) == 4 ? dtype::F32 : dtype::F64;
}

// One tensor of a file: its dtype, shape and raw little-endian bytes (row-major).
struct tensor_entry {
  dtype type = dtype::F32;
  shape_t shape;
  std::vector<std::uint8_t> data;
};

namespace detail {
constexpr std::uint64_t safetensors_max_header = 100'000'000;

// Element count and byte count of a shape, or nullopt when the byte count would not fit in
// 63 bits. Zero dims do not excuse the others: a [0, 2^40, 2^40] tensor is refused too, since
// its strides would overflow (this is stricter than the reference, whose check depends on where
// the zero is).
PEFT_INLINE std::optional<std::pair<std::uint64_t, std::uint64_t>> checked_sizes(const shape_t& s, dtype t);

template <class U>
U load_le(const std::uint8_t* p) {
  U v;
  if constexpr (std::endian::native == std::endian::little) {
    std::memcpy(&v, p, sizeof(U));
  } else {
    std::uint8_t b[sizeof(U)];
    for (std::size_t i = 0; i < sizeof(U); ++i) b[i] = p[sizeof(U) - 1 - i];
    std::memcpy(&v, b, sizeof(U));
  }
  return v;
}
template <class U>
void store_le(std::uint8_t* p, U v) {
  std::memcpy(p, &v, sizeof(U));
  if constexpr (std::endian::native != std::endian::little) std::reverse(p, p + sizeof(U));
}

// A tensor as the header describes it.
struct st_info {
  std::string name;
  dtype type;
  shape_t shape;
  std::uint64_t begin = 0, end = 0;
};
struct st_header {
  std::vector<st_info> tensors;  // sorted by offset
  std::map<std::string, std::string> metadata;
};

PEFT_INLINE std::string range_str(std::uint64_t b, std::uint64_t e);

// Validates a header (its JSON text) against a data buffer of buffer_size bytes.
PEFT_INLINE st_header parse_st_header(std::string_view text, std::uint64_t buffer_size, const std::string& where);

// Decodes a tensor's bytes into out[0, numel).
template <std::floating_point T>
void decode_tensor(const tensor_entry& e, T* out, const std::string& where) {
  const std::size_t n = e.data.size() / dtype_size(e.type);
  const std::uint8_t* p = e.data.data();
  switch (e.type) {
    case dtype::F32:
      if constexpr (std::is_same_v<T, float> && std::endian::native == std::endian::little) {
        if (n) std::memcpy(out, p, n * 4);
      } else {
        for (std::size_t i = 0; i < n; ++i) out[i] = T(load_le<float>(p + 4 * i));
      }
      return;
    case dtype::F64:
      if constexpr (std::is_same_v<T, double> && std::endian::native == std::endian::little) {
        if (n) std::memcpy(out, p, n * 8);
      } else {
        for (std::size_t i = 0; i < n; ++i) out[i] = T(load_le<double>(p + 8 * i));
      }
      return;
    case dtype::F16:
      for (std::size_t i = 0; i < n; ++i) out[i] = T(peft::detail::half_to_float(load_le<std::uint16_t>(p + 2 * i)));
      return;
    case dtype::BF16:
      for (std::size_t i = 0; i < n; ++i) out[i] = T(peft::detail::bf16_to_float(load_le<std::uint16_t>(p + 2 * i)));
      return;
    case dtype::U8: for (std::size_t i = 0; i < n; ++i) out[i] = T(p[i]); return;
    case dtype::I8: for (std::size_t i = 0; i < n; ++i) out[i] = T(load_le<std::int8_t>(p + i)); return;
    case dtype::I16: for (std::size_t i = 0; i < n; ++i) out[i] = T(load_le<std::int16_t>(p + 2 * i)); return;
    case dtype::U16: for (std::size_t i = 0; i < n; ++i) out[i] = T(load_le<std::uint16_t>(p + 2 * i)); return;
    case dtype::I32: for (std::size_t i = 0; i < n; ++i) out[i] = T(load_le<std::int32_t>(p + 4 * i)); return;
    case dtype::U32: for (std::size_t i = 0; i < n; ++i) out[i] = T(load_le<std::uint32_t>(p + 4 * i)); return;
    case dtype::I64: for (std::size_t i = 0; i < n; ++i) out[i] = T(load_le<std::int64_t>(p + 8 * i)); return;
    case dtype::U64: for (std::size_t i = 0; i < n; ++i) out[i] = T(load_le<std::uint64_t>(p + 8 * i)); return;
    case dtype::BOOL:
      for (std::size_t i = 0; i < n; ++i) {
        if (p[i] > 1)
          throw io_error(where + ": BOOL element " + std::to_string(i) + " is byte " + std::to_string(p[i]) +
                         ", not 0 or 1");
        out[i] = T(p[i]);
      }
      return;
    case dtype::F8_E5M2:
    case dtype::F8_E4M3:
      break;
  }
  throw io_error(where + ": cannot convert " + dtype_name(e.type) + " to a floating-point tensor");
}

// Encodes n values as `type` (a float dtype) into out (n · dtype_size bytes).
template <std::floating_point T>
void encode_tensor(const T* in, std::size_t n, dtype type, std::uint8_t* out) {
  switch (type) {
    case dtype::F32:
      if constexpr (std::is_same_v<T, float> && std::endian::native == std::endian::little) {
        if (n) std::memcpy(out, in, n * 4);
      } else {
        for (std::size_t i = 0; i < n; ++i) store_le<float>(out + 4 * i, float(in[i]));
      }
      return;
    case dtype::F64:
      for (std::size_t i = 0; i < n; ++i) store_le<double>(out + 8 * i, double(in[i]));
      return;
    case dtype::F16:
      for (std::size_t i = 0; i < n; ++i) store_le<std::uint16_t>(out + 2 * i, peft::detail::double_to_half(double(in[i])));
      return;
    case dtype::BF16:
      for (std::size_t i = 0; i < n; ++i) store_le<std::uint16_t>(out + 2 * i, peft::detail::double_to_bf16(double(in[i])));
      return;
    default:
      throw value_error(std::string("safetensors: cannot store a floating-point tensor as ") + dtype_name(type) +
                        " (F32, F64, F16 or BF16)");
  }
}
}  // namespace detail

// The contents of a safetensors file: named tensors (raw bytes + dtype + shape) and the
// __metadata__ strings. Tensors convert to tensor<T> from any float or integer dtype.
class safetensors_file {
 public:
  using metadata_map = std::map<std::string, std::string>;

  safetensors_file() = default;

  // ---- building ----

  // Adds raw bytes (little-endian, row-major). Throws value_error if the name is invalid or
  // already present, or the byte count does not match the shape.
  void add(const std::string& name, dtype type, shape_t shape, std::vector<std::uint8_t> data);
  // Adds a tensor converted to `type` (F32, F64, F16 or BF16; rounding to nearest even).
  template <std::floating_point T>
  void add(const std::string& name, const tensor<T>& t, dtype type = dtype_of<T>()) {
    check_new_name(name);
    if (!is_float_dtype(type))
      throw value_error(std::string("safetensors: cannot store tensor '") + name + "' as " + dtype_name(type) +
                        " (F32, F64, F16 or BF16)");
    tensor_entry e{type, shape_of(t), std::vector<std::uint8_t>(t.size() * dtype_size(type))};
    detail::encode_tensor(t.data(), t.size(), type, e.data.data());
    entries_.emplace(name, std::move(e));
  }
  void erase(const std::string& name) { entries_.erase(name); }

  metadata_map& metadata() { return metadata_; }
  const metadata_map& metadata() const { return metadata_; }

  // ---- access ----

  bool contains(const std::string& name) const { return entries_.count(name) != 0; }
  std::size_t size() const { return entries_.size(); }
  // Tensor names in sorted order.
  std::vector<std::string> names() const;
  const std::map<std::string, tensor_entry>& entries() const { return entries_; }
  const tensor_entry& at(const std::string& name) const;
  // The tensor converted to T (exact for F16/BF16/F32 -> float and anything -> double).
  template <std::floating_point T>
  tensor<T> get(const std::string& name) const {
    const tensor_entry& e = at(name);
    tensor<T> t = tensor<T>::from_shape(e.shape);
    detail::decode_tensor<T>(e, t.data(), where() + ": tensor '" + name + "'");
    return t;
  }
  // Where this file came from ("<memory>" or its path), for messages.
  const std::string& source() const { return source_; }

  // ---- bytes ----

  // The header JSON (without the size prefix, with the padding), exactly as save() writes it.
  std::string header() const;

  // The whole file in memory.
  std::vector<std::uint8_t> serialize() const;

  // Writes the file atomically (<path>.tmp.<pid>, fsync, rename).
  void save(const std::string& path) const;

  // Parses a complete file image. `source` names it in error messages.
  static safetensors_file parse(const void* data, std::size_t size, const std::string& source = "<memory>");

  // Reads and validates a file: the header first, then each tensor's bytes straight into place.
  static safetensors_file load(const std::string& path);

 private:
  using entry_ptr = const std::pair<const std::string, tensor_entry>*;

  std::string where() const { return "safetensors '" + source_ + "'"; }

  void check_new_name(const std::string& name) const;

  // The reference serializer's order: dtype alignment descending, then name.
  std::vector<entry_ptr> ordered() const;

  template <class Write>
  void write_to(Write&& write) const {
    const std::string h = header();
    std::uint8_t pre[8];
    detail::store_le<std::uint64_t>(pre, std::uint64_t(h.size()));
    write(pre, 8);
    write(h.data(), h.size());
    for (const auto* e : ordered())
      if (!e->second.data.empty()) write(e->second.data.data(), e->second.data.size());
  }

  // Validates the size prefix against the limit and the file size.
  static std::uint64_t read_header_size(const std::uint8_t* b, std::uintmax_t size, const std::string& w);

  std::map<std::string, tensor_entry> entries_;
  metadata_map metadata_;
  std::string source_ = "<memory>";
};

// ---- definitions: here (inline) for header-only programs; in the compiled library only in
// src/io.cpp (PEFT_UNIT_IO), so that they are defined once ----
#if !defined(PEFT_COMPILED_LIB) || defined(PEFT_UNIT_IO)
PEFT_INLINE std::size_t dtype_size(dtype t) {
  switch (t) {
    case dtype::BOOL: case dtype::U8: case dtype::I8: case dtype::F8_E5M2: case dtype::F8_E4M3: return 1;
    case dtype::I16: case dtype::U16: case dtype::F16: case dtype::BF16: return 2;
    case dtype::I32: case dtype::U32: case dtype::F32: return 4;
    case dtype::F64: case dtype::I64: case dtype::U64: return 8;
  }
  return 0;
}
PEFT_INLINE const char* dtype_name(dtype t) {
  switch (t) {
    case dtype::BOOL: return "BOOL";
    case dtype::U8: return "U8";
    case dtype::I8: return "I8";
    case dtype::F8_E5M2: return "F8_E5M2";
    case dtype::F8_E4M3: return "F8_E4M3";
    case dtype::I16: return "I16";
    case dtype::U16: return "U16";
    case dtype::F16: return "F16";
    case dtype::BF16: return "BF16";
    case dtype::I32: return "I32";
    case dtype::U32: return "U32";
    case dtype::F32: return "F32";
    case dtype::F64: return "F64";
    case dtype::I64: return "I64";
    case dtype::U64: return "U64";
  }
  return "?";
}
PEFT_INLINE std::optional<dtype> dtype_from_name(std::string_view s) {
  for (int i = 0; i <= int(dtype::U64); ++i)
    if (s == dtype_name(dtype(i))) return dtype(i);
  return std::nullopt;
}

namespace detail {
PEFT_INLINE std::optional<std::pair<std::uint64_t, std::uint64_t>> checked_sizes(const shape_t& s, dtype t) {
  constexpr std::uint64_t limit = std::uint64_t(std::numeric_limits<std::int64_t>::max());
  std::uint64_t nonzero = dtype_size(t);  // bytes of the nonzero extents
  bool empty = false;
  for (auto d : s) {
    if (d == 0) {
      empty = true;
      continue;
    }
    if (nonzero > limit / d) return std::nullopt;
    nonzero *= d;
  }
  const std::uint64_t bytes = empty ? 0 : nonzero;
  return std::pair{bytes / dtype_size(t), bytes};
}

PEFT_INLINE std::string range_str(std::uint64_t b, std::uint64_t e) {
  std::string s(1, '[');
  s += std::to_string(b);
  s += ',';
  s += std::to_string(e);
  s += ']';
  return s;
}

PEFT_INLINE st_header parse_st_header(std::string_view text, std::uint64_t buffer_size, const std::string& where) {
  using nlohmann::json;
  // Depth 3: the header object, a tensor's object, its shape array.
  const json j = parse_json_strict(text, 3, where + ": header");
  if (!j.is_object()) throw io_error(where + ": header is a JSON " + json_type(j) + ", not an object");
  st_header h;
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& name = it.key();
    const json& v = it.value();
    if (name == "__metadata__") {
      if (v.is_null()) continue;
      if (!v.is_object())
        throw io_error(where + ": __metadata__ is a JSON " + json_type(v) + ", not an object of strings");
      for (auto m = v.begin(); m != v.end(); ++m) {
        if (!m.value().is_string())
          throw io_error(where + ": __metadata__ value for key '" + m.key() + "' is a JSON " +
                         json_type(m.value()) + ", not a string");
        h.metadata.emplace(m.key(), m.value().get<std::string>());
      }
      continue;
    }
    const std::string tw = where + ": tensor '" + name + "'";
    if (!v.is_object()) throw io_error(tw + ": entry is a JSON " + json_type(v) + ", not an object");
    for (auto f = v.begin(); f != v.end(); ++f)
      if (f.key() != "dtype" && f.key() != "shape" && f.key() != "data_offsets")
        throw io_error(tw + ": unknown field '" + f.key() + "'");
    st_info info;
    info.name = name;

    const auto dt = v.find("dtype");
    if (dt == v.end()) throw io_error(tw + ": missing field 'dtype'");
    if (!dt->is_string()) throw io_error(tw + ": dtype is a JSON " + json_type(*dt) + ", not a string");
    const auto type = dtype_from_name(dt->get_ref<const std::string&>());
    if (!type) throw io_error(tw + ": unknown dtype '" + dt->get<std::string>() + "'");
    info.type = *type;

    const auto sh = v.find("shape");
    if (sh == v.end()) throw io_error(tw + ": missing field 'shape'");
    if (!sh->is_array()) throw io_error(tw + ": shape is a JSON " + json_type(*sh) + ", not an array");
    for (std::size_t i = 0; i < sh->size(); ++i) {
      const json& d = (*sh)[i];
      if (!d.is_number_unsigned() || d.get<std::uint64_t>() > std::numeric_limits<std::size_t>::max())
        throw io_error(tw + ": shape[" + std::to_string(i) + "] = " + d.dump() +
                       " is not a non-negative integer");
      info.shape.push_back(std::size_t(d.get<std::uint64_t>()));
    }
    const auto sizes = checked_sizes(info.shape, info.type);
    if (!sizes)
      throw io_error(tw + ": shape " + shape_str(info.shape) + " of " + dtype_name(info.type) +
                     " overflows a 63-bit byte count");

    const auto off = v.find("data_offsets");
    if (off == v.end()) throw io_error(tw + ": missing field 'data_offsets'");
    if (!off->is_array() || off->size() != 2 || !(*off)[0].is_number_unsigned() ||
        !(*off)[1].is_number_unsigned())
      throw io_error(tw + ": data_offsets " + off->dump() + " is not [begin, end] of non-negative integers");
    info.begin = (*off)[0].get<std::uint64_t>();
    info.end = (*off)[1].get<std::uint64_t>();
    const std::string offs = range_str(info.begin, info.end);
    if (info.begin > info.end) throw io_error(tw + ": data_offsets " + offs + " end before they begin");
    if (info.end > buffer_size)
      throw io_error(tw + ": data_offsets " + offs + " out of range of the " + std::to_string(buffer_size) +
                     "-byte data buffer");
    if (info.end - info.begin != sizes->second)
      throw io_error(tw + ": data_offsets " + offs + " span " + std::to_string(info.end - info.begin) +
                     " bytes, but shape " + shape_str(info.shape) + " of " + dtype_name(info.type) + " needs " +
                     std::to_string(sizes->second));
    h.tensors.push_back(std::move(info));
  }
  std::sort(h.tensors.begin(), h.tensors.end(), [](const st_info& a, const st_info& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  std::uint64_t pos = 0;
  const st_info* prev = nullptr;
  for (const auto& t : h.tensors) {
    const std::string offs = range_str(t.begin, t.end);
    if (t.begin < pos)
      throw io_error(where + ": tensor '" + t.name + "' data_offsets " + offs + " overlap tensor '" +
                     prev->name + "' " + range_str(prev->begin, prev->end));
    if (t.begin > pos)
      throw io_error(where + ": gap of " + std::to_string(t.begin - pos) + " bytes in the data buffer before tensor '" +
                     t.name + "' " + offs);
    pos = t.end;
    prev = &t;
  }
  if (pos != buffer_size)
    throw io_error(where + ": tensors cover " + std::to_string(pos) + " bytes of the " + std::to_string(buffer_size) +
                   "-byte data buffer (" + std::to_string(buffer_size - pos) + " trailing bytes)");
  return h;
}
}  // namespace detail

PEFT_INLINE void safetensors_file::add(const std::string& name, dtype type, shape_t shape,
                                       std::vector<std::uint8_t> data) {
  check_new_name(name);
  const auto sizes = detail::checked_sizes(shape, type);
  if (!sizes || sizes->second != data.size())
    throw value_error("safetensors: tensor '" + name + "' has " + std::to_string(data.size()) +
                      " bytes for shape " + shape_str(shape) + " of " + dtype_name(type));
  entries_.emplace(name, tensor_entry{type, std::move(shape), std::move(data)});
}
PEFT_INLINE std::vector<std::string> safetensors_file::names() const {
  std::vector<std::string> n;
  for (auto& [k, v] : entries_) n.push_back(k);
  return n;
}
PEFT_INLINE const tensor_entry& safetensors_file::at(const std::string& name) const {
  auto it = entries_.find(name);
  if (it == entries_.end()) throw io_error(where() + ": no tensor '" + name + "'");
  return it->second;
}

PEFT_INLINE std::string safetensors_file::header() const {
  // Appended piece by piece (GCC 12 warns spuriously on long chains of string operator+).
  std::string h = "{";
  auto sep = [&h] {
    if (h.size() > 1 && h.back() != '{') h += ',';
  };
  if (!metadata_.empty()) {
    h += "\"__metadata__\":{";
    for (auto& [k, v] : metadata_) {
      if (!detail::valid_utf8(k) || !detail::valid_utf8(v))
        throw value_error("safetensors: __metadata__ entry '" + k + "' is not valid UTF-8");
      sep();
      h += nlohmann::json(k).dump();
      h += ':';
      h += nlohmann::json(v).dump();
    }
    h += '}';
  }
  std::uint64_t offset = 0;
  for (const auto* e : ordered()) {
    const tensor_entry& t = e->second;
    sep();
    h += nlohmann::json(e->first).dump();
    h += ":{\"dtype\":\"";
    h += dtype_name(t.type);
    h += "\",\"shape\":[";
    for (std::size_t i = 0; i < t.shape.size(); ++i) {
      if (i) h += ',';
      h += std::to_string(t.shape[i]);
    }
    h += "],\"data_offsets\":";
    h += detail::range_str(offset, offset + t.data.size());
    h += '}';
    offset += t.data.size();
  }
  h += '}';
  h.append((8 - h.size() % 8) % 8, ' ');
  return h;
}

PEFT_INLINE std::vector<std::uint8_t> safetensors_file::serialize() const {
  std::vector<std::uint8_t> out;
  write_to([&](const void* p, std::size_t n) {
    const auto* b = static_cast<const std::uint8_t*>(p);
    out.insert(out.end(), b, b + n);
  });
  return out;
}

PEFT_INLINE void safetensors_file::save(const std::string& path) const {
  detail::write_file_atomic(path, [&](detail::file_sink& s) {
    write_to([&](const void* p, std::size_t n) { s.write(p, n); });
  });
}

PEFT_INLINE safetensors_file safetensors_file::parse(const void* data, std::size_t size, const std::string& source) {
  const auto* b = static_cast<const std::uint8_t*>(data);
  const std::string w = "safetensors '" + source + "'";
  const std::uint64_t n = read_header_size(b, size, w);
  const std::string_view text(reinterpret_cast<const char*>(b + 8), std::size_t(n));
  auto h = detail::parse_st_header(text, size - 8 - n, w);
  safetensors_file f;
  f.source_ = source;
  f.metadata_ = std::move(h.metadata);
  const std::uint8_t* buf = b + 8 + n;
  for (auto& t : h.tensors)
    f.entries_.emplace(std::move(t.name),
                       tensor_entry{t.type, std::move(t.shape),
                                    std::vector<std::uint8_t>(buf + t.begin, buf + t.end)});
  return f;
}

PEFT_INLINE safetensors_file safetensors_file::load(const std::string& path) {
  const std::string w = "safetensors '" + path + "'";
  std::error_code ec;
  const std::uintmax_t size = std::filesystem::file_size(path, ec);
  if (ec) throw io_error(w + ": cannot read: " + ec.message());
  std::ifstream in(path, std::ios::binary);
  if (!in) throw io_error(w + ": cannot open: " + std::strerror(errno));
  std::uint8_t pre[8] = {};
  const std::size_t got = size >= 8 ? 8 : std::size_t(size);
  if (got && !in.read(reinterpret_cast<char*>(pre), std::streamsize(got)))
    throw io_error(w + ": read failed");
  // read_header_size only looks at the first 8 bytes and the total size.
  const std::uint64_t n = read_header_size(pre, size, w);
  std::string text(std::size_t(n), '\0');
  if (n && !in.read(text.data(), std::streamsize(n))) throw io_error(w + ": unexpected end of file in the header");
  auto h = detail::parse_st_header(text, size - 8 - n, w);
  safetensors_file f;
  f.source_ = path;
  f.metadata_ = std::move(h.metadata);
  for (auto& t : h.tensors) {  // sorted by offset and contiguous: sequential reads
    std::vector<std::uint8_t> bytes(std::size_t(t.end - t.begin));
    if (!bytes.empty() && !in.read(reinterpret_cast<char*>(bytes.data()), std::streamsize(bytes.size())))
      throw io_error(w + ": unexpected end of file in tensor '" + t.name + "'");
    f.entries_.emplace(std::move(t.name), tensor_entry{t.type, std::move(t.shape), std::move(bytes)});
  }
  return f;
}

PEFT_INLINE void safetensors_file::check_new_name(const std::string& name) const {
  if (name == "__metadata__") throw value_error("safetensors: '__metadata__' cannot name a tensor");
  if (!detail::valid_utf8(name)) throw value_error("safetensors: tensor name is not valid UTF-8");
  if (entries_.count(name)) throw value_error("safetensors: duplicate tensor '" + name + "'");
}

PEFT_INLINE std::vector<safetensors_file::entry_ptr> safetensors_file::ordered() const {
  std::vector<entry_ptr> v;
  for (auto& e : entries_) v.push_back(&e);
  std::stable_sort(v.begin(), v.end(), [](entry_ptr a, entry_ptr b) {
    return a->second.type != b->second.type ? a->second.type > b->second.type : a->first < b->first;
  });
  return v;
}

PEFT_INLINE std::uint64_t safetensors_file::read_header_size(const std::uint8_t* b, std::uintmax_t size,
                                                             const std::string& w) {
  if (size < 8)
    throw io_error(w + ": file is " + std::to_string(size) + " bytes, too short for the 8-byte header size");
  const auto n = detail::load_le<std::uint64_t>(b);
  if (n > detail::safetensors_max_header)
    throw io_error(w + ": header size " + std::to_string(n) + " exceeds the limit of " +
                   std::to_string(detail::safetensors_max_header) + " bytes");
  if (n > size - 8)
    throw io_error(w + ": header size " + std::to_string(n) + " exceeds the " + std::to_string(size - 8) +
                   " bytes after the size field");
  return n;
}
#endif  // !PEFT_COMPILED_LIB || PEFT_UNIT_IO

// ---- typed helpers ----

// Every tensor of a file converted to T (from any float or integer dtype).
template <std::floating_point T>
std::map<std::string, tensor<T>> load_safetensors(const std::string& path,
                                                  std::map<std::string, std::string>* metadata = nullptr) {
  const auto f = safetensors_file::load(path);
  std::map<std::string, tensor<T>> sd;
  for (auto& [name, e] : f.entries()) sd.emplace(name, f.get<T>(name));
  if (metadata) *metadata = f.metadata();
  return sd;
}

// Saves named tensors as `type` (F32, F64, F16 or BF16), atomically.
template <std::floating_point T>
void save_safetensors(const std::string& path, const std::map<std::string, tensor<T>>& tensors,
                      dtype type = dtype_of<T>(), const std::map<std::string, std::string>& metadata = {}) {
  safetensors_file f;
  for (auto& [name, t] : tensors) f.add(name, t, type);
  f.metadata() = metadata;
  f.save(path);
}

}  // namespace peft::io
