#pragma once
// GGUF, ggml's single-file model format (version 3; llama.cpp loads it), little-endian:
//   "GGUF" | u32 version | u64 tensor_count | u64 kv_count
//   kv_count x  { string key | u32 value type | value }          (metadata)
//   tensor_count x { string name | u32 n_dims | u64 ne[n_dims] | u32 ggml type | u64 offset }
//   padding to the alignment (metadata "general.alignment", u32, default 32)
//   data section: each tensor at data_start + offset, offsets multiples of the alignment
// A string is u64 length + bytes (no terminator); an array is u32 element type + u64 count +
// elements (arrays may nest); a bool is one byte 0/1. ne[] is in ggml order, innermost first, so
// a row-major PyTorch tensor of shape [a, b] has ne = [b, a] and the very same bytes.
//
// Reading treats every byte as hostile and fails with io_error naming the file and the problem:
// reads stay in bounds, counts and lengths are checked against the bytes that remain before
// anything is allocated, keys and tensor names are non-empty valid UTF-8 without duplicates,
// bools are 0 or 1, arrays nest at most gguf_max_depth deep, general.alignment is a u32 power
// of two, tensors have at most 4 dims with element and byte counts that fit in int64, a known
// ggml type whose block size divides ne[0], offsets aligned and inside the file, no two tensors
// overlapping and nothing between or after them but alignment padding. String values are kept
// as raw bytes (real vocabularies hold tokens that are not valid UTF-8 on their own).
// Writing lays tensors out like ggml's writer (in insertion order, each padded to the alignment)
// and replaces the file atomically.
#include <algorithm>
#include <concepts>
#include <cstdint>
#include <cstring>
#include <limits>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include "peft/core/config.hpp"
#include "peft/core/error.hpp"
#include "peft/core/tensor.hpp"
#include "peft/detail/half.hpp"
#include "peft/io/detail/util.hpp"
#include "peft/io/safetensors.hpp"  // detail::load_le / store_le

namespace peft::io {

// ---- value types ----

// Metadata value types; the numbers are the file's.
enum class gguf_value_type : std::uint32_t {
  uint8 = 0, int8 = 1, uint16 = 2, int16 = 3, uint32 = 4, int32 = 5, float32 = 6, boolean = 7,
  string = 8, array = 9, uint64 = 10, int64 = 11, float64 = 12
};

PEFT_INLINE const char* gguf_value_type_name(gguf_value_type t);

// Tensor element types (ggml_type); the numbers are the file's. Block-quantized types store
// `block` elements in `size` bytes.
enum class ggml_type : std::uint32_t {
  F32 = 0, F16 = 1, Q4_0 = 2, Q4_1 = 3, Q5_0 = 6, Q5_1 = 7, Q8_0 = 8, Q8_1 = 9, Q2_K = 10,
  Q3_K = 11, Q4_K = 12, Q5_K = 13, Q6_K = 14, Q8_K = 15, IQ2_XXS = 16, IQ2_XS = 17, IQ3_XXS = 18,
  IQ1_S = 19, IQ4_NL = 20, IQ3_S = 21, IQ2_S = 22, IQ4_XS = 23, I8 = 24, I16 = 25, I32 = 26,
  I64 = 27, F64 = 28, IQ1_M = 29, BF16 = 30, TQ1_0 = 34, TQ2_0 = 35, MXFP4 = 39, NVFP4 = 40,
  Q1_0 = 41, Q2_0 = 42
};

struct ggml_type_traits {
  const char* name;
  std::uint32_t block;  // elements per block
  std::uint32_t size;   // bytes per block
};

// Traits of a type id, or nullopt for ids ggml does not define (or has retired).
PEFT_INLINE std::optional<ggml_type_traits> ggml_traits(std::uint32_t id);
PEFT_INLINE ggml_type_traits ggml_traits(ggml_type t);
PEFT_INLINE const char* ggml_type_name(ggml_type t);
// Types that tensor<T> converts from (decode) and, for F32/F16/BF16/F64, to (encode).
PEFT_INLINE bool ggml_type_decodable(ggml_type t);

// Limits of the reader (the format has none of its own).
constexpr int gguf_max_depth = 8;              // nesting of arrays inside arrays
constexpr std::size_t gguf_max_dims = 4;       // GGML_MAX_DIMS
constexpr std::size_t gguf_max_name = 63;      // ggml keeps names in char[64]
constexpr std::size_t gguf_max_key = 65535;    // the spec's bound on key length
constexpr std::uint32_t gguf_default_alignment = 32;

class gguf_value;

namespace detail {
struct gguf_codec;
template <class V> struct gguf_type_of;
template <> struct gguf_type_of<std::uint8_t> { static constexpr auto value = gguf_value_type::uint8; };
template <> struct gguf_type_of<std::int8_t> { static constexpr auto value = gguf_value_type::int8; };
template <> struct gguf_type_of<std::uint16_t> { static constexpr auto value = gguf_value_type::uint16; };
template <> struct gguf_type_of<std::int16_t> { static constexpr auto value = gguf_value_type::int16; };
template <> struct gguf_type_of<std::uint32_t> { static constexpr auto value = gguf_value_type::uint32; };
template <> struct gguf_type_of<std::int32_t> { static constexpr auto value = gguf_value_type::int32; };
template <> struct gguf_type_of<float> { static constexpr auto value = gguf_value_type::float32; };
template <> struct gguf_type_of<bool> { static constexpr auto value = gguf_value_type::boolean; };
template <> struct gguf_type_of<std::string> { static constexpr auto value = gguf_value_type::string; };
template <> struct gguf_type_of<std::uint64_t> { static constexpr auto value = gguf_value_type::uint64; };
template <> struct gguf_type_of<std::int64_t> { static constexpr auto value = gguf_value_type::int64; };
template <> struct gguf_type_of<double> { static constexpr auto value = gguf_value_type::float64; };
template <> struct gguf_type_of<gguf_value> { static constexpr auto value = gguf_value_type::array; };
}  // namespace detail

// C++ types that are GGUF scalars: the fixed-width integers, float, double, bool, std::string.
template <class V>
concept gguf_scalar = requires { detail::gguf_type_of<V>::value; } && !std::is_same_v<V, gguf_value>;
// Element types of arrays: the scalars, or gguf_value for an array of arrays.
template <class V>
concept gguf_element = requires { detail::gguf_type_of<V>::value; };

// One metadata value: a scalar or a (typed) array. An array of arrays holds gguf_value items,
// each of which is itself an array (of any element type).
class gguf_value {
 public:
  template <class V>
    requires gguf_scalar<std::remove_cvref_t<V>>
  gguf_value(V&& v) : v_(std::in_place_type<std::remove_cvref_t<V>>, std::forward<V>(v)) {}
  gguf_value(const char* s) : v_(std::in_place_type<std::string>, s) {}
  gguf_value(std::string_view s) : v_(std::in_place_type<std::string>, s) {}

  // An array of V (a scalar type, or gguf_value for an array of arrays, whose items must all be
  // arrays).
  template <gguf_element V>
  static gguf_value array(std::vector<V> items) {
    if constexpr (std::is_same_v<V, gguf_value>)
      for (auto& it : items)
        if (!it.is_array())
          throw value_error(std::string("gguf_value::array: an array of arrays holds a ") +
                            gguf_value_type_name(it.type()) + " item");
    gguf_value r;
    r.v_.template emplace<array_t>(std::in_place_type<std::vector<V>>, std::move(items));
    return r;
  }

  gguf_value_type type() const {
    return is_array() ? gguf_value_type::array : scalar_type();
  }
  bool is_array() const { return std::holds_alternative<array_t>(v_); }
  // Element type of an array.
  gguf_value_type elem_type() const {
    return gguf_value_type(array_ref("elem_type").index());
  }
  std::size_t array_size() const;

  // The scalar as V; value_error naming both types if it holds another type.
  template <gguf_scalar V>
  const V& get() const {
    if (const V* p = std::get_if<V>(&v_)) return *p;
    throw value_error(std::string("gguf_value: holds ") + type_str() + ", not " +
                      gguf_value_type_name(detail::gguf_type_of<V>::value));
  }
  // The array's items as vector<V>; value_error if it is not an array of V.
  template <gguf_element V>
  const std::vector<V>& get_array() const {
    const auto& a = array_ref("get_array");
    if (const auto* p = std::get_if<std::vector<V>>(&a)) return *p;
    throw value_error(std::string("gguf_value: holds ") + type_str() + ", not ARRAY of " +
                      gguf_value_type_name(detail::gguf_type_of<V>::value));
  }

  // Any integer scalar as int64 / uint64 (value_error if not an integer or out of range).
  std::int64_t to_int64() const;
  std::uint64_t to_uint64() const;
  // FLOAT32 / FLOAT64 (or any integer) as double.
  double to_double() const;

  friend bool operator==(const gguf_value& a, const gguf_value& b) { return a.equals(b); }

  std::string type_str() const;

 private:
  // Index = the file's type number for scalars; arrays use index 9 with their own variant whose
  // index is the element type number.
  using array_t = std::variant<std::vector<std::uint8_t>, std::vector<std::int8_t>,
                               std::vector<std::uint16_t>, std::vector<std::int16_t>,
                               std::vector<std::uint32_t>, std::vector<std::int32_t>,
                               std::vector<float>, std::vector<bool>, std::vector<std::string>,
                               std::vector<gguf_value>, std::vector<std::uint64_t>,
                               std::vector<std::int64_t>, std::vector<double>>;
  using storage_t = std::variant<std::uint8_t, std::int8_t, std::uint16_t, std::int16_t,
                                 std::uint32_t, std::int32_t, float, bool, std::string, array_t,
                                 std::uint64_t, std::int64_t, double>;

  gguf_value() = default;
  gguf_value_type scalar_type() const { return gguf_value_type(v_.index()); }
  const array_t& array_ref(const char* op) const;
  bool equals(const gguf_value& o) const;  // the variants compare equal

  storage_t v_;

  friend class gguf_file;
  friend struct detail::gguf_codec;
};

// One tensor: its type, its dims in ggml order and its raw little-endian bytes.
struct gguf_tensor {
  ggml_type type = ggml_type::F32;
  std::vector<std::uint64_t> ne;  // ne[0] is the innermost (contiguous) dimension
  std::vector<std::uint8_t> data;

  std::uint64_t numel() const {
    std::uint64_t n = 1;
    for (auto d : ne) n *= d;
    return n;
  }
  // Row-major (PyTorch) shape: ne reversed.
  shape_t shape() const { return shape_t(ne.rbegin(), ne.rend()); }
};

namespace detail {
inline std::uint64_t gguf_pad(std::uint64_t x, std::uint64_t align) {
  return (x + align - 1) / align * align;
}

// Element and byte counts of (type, ne), or nullopt with the reason.
PEFT_INLINE std::optional<std::string> gguf_check_dims(std::uint32_t type_id, const std::vector<std::uint64_t>& ne,
                                                  std::uint64_t& nbytes);

// Decodes n elements of a tensor into out.
template <std::floating_point T>
void gguf_decode(const gguf_tensor& t, T* out, const std::string& where) {
  const std::uint8_t* p = t.data.data();
  const std::size_t n = std::size_t(t.numel());
  switch (t.type) {
    case ggml_type::F32:
      if constexpr (std::is_same_v<T, float> && std::endian::native == std::endian::little) {
        if (n) std::memcpy(out, p, n * 4);
      } else {
        for (std::size_t i = 0; i < n; ++i) out[i] = T(load_le<float>(p + 4 * i));
      }
      return;
    case ggml_type::F64:
      for (std::size_t i = 0; i < n; ++i) out[i] = T(load_le<double>(p + 8 * i));
      return;
    case ggml_type::F16:
      for (std::size_t i = 0; i < n; ++i) out[i] = T(peft::detail::half_to_float(load_le<std::uint16_t>(p + 2 * i)));
      return;
    case ggml_type::BF16:
      for (std::size_t i = 0; i < n; ++i) out[i] = T(peft::detail::bf16_to_float(load_le<std::uint16_t>(p + 2 * i)));
      return;
    case ggml_type::I8: for (std::size_t i = 0; i < n; ++i) out[i] = T(std::int8_t(p[i])); return;
    case ggml_type::I16: for (std::size_t i = 0; i < n; ++i) out[i] = T(load_le<std::int16_t>(p + 2 * i)); return;
    case ggml_type::I32: for (std::size_t i = 0; i < n; ++i) out[i] = T(load_le<std::int32_t>(p + 4 * i)); return;
    case ggml_type::I64: for (std::size_t i = 0; i < n; ++i) out[i] = T(load_le<std::int64_t>(p + 8 * i)); return;
    case ggml_type::Q8_0:  // {f16 d; i8 q[32]}: x = d·q
      for (std::size_t b = 0; b < n / 32; ++b) {
        const std::uint8_t* blk = p + 34 * b;
        const float d = peft::detail::half_to_float(load_le<std::uint16_t>(blk));
        for (std::size_t j = 0; j < 32; ++j) out[32 * b + j] = T(d * float(std::int8_t(blk[2 + j])));
      }
      return;
    case ggml_type::Q4_0:  // {f16 d; u8 q[16]}: low nibbles are elements 0..15, high 16..31; x = d·(q−8)
    case ggml_type::Q4_1:  // {f16 d; f16 m; u8 q[16]}: x = d·q + m
      {
        const bool q41 = t.type == ggml_type::Q4_1;
        const std::size_t bs = q41 ? 20 : 18;
        for (std::size_t b = 0; b < n / 32; ++b) {
          const std::uint8_t* blk = p + bs * b;
          const float d = peft::detail::half_to_float(load_le<std::uint16_t>(blk));
          const float m = q41 ? peft::detail::half_to_float(load_le<std::uint16_t>(blk + 2)) : 0.0f;
          const std::uint8_t* q = blk + (q41 ? 4 : 2);
          const int off = q41 ? 0 : 8;
          for (std::size_t j = 0; j < 16; ++j) {
            out[32 * b + j] = T(float((q[j] & 0x0f) - off) * d + m);
            out[32 * b + j + 16] = T(float((q[j] >> 4) - off) * d + m);
          }
        }
      }
      return;
    default:
      throw io_error(where + ": cannot convert " + ggml_type_name(t.type) +
                     " to floating point (F32, F16, BF16, F64, I8-I64, Q8_0, Q4_0, Q4_1)");
  }
}

// Bounds-checked little-endian reader over a file image.
struct gguf_reader {
  const std::uint8_t* p;
  std::uint64_t size;
  std::uint64_t pos = 0;
  const std::string& where;

  std::uint64_t remaining() const { return size - pos; }
  [[noreturn]] void fail(const std::string& what) const {
    throw io_error(where + ": " + what + " (at byte " + std::to_string(pos) + ")");
  }
  template <class U>
  U read(const std::string& what) {
    if (remaining() < sizeof(U))
      fail("unexpected end of file reading " + what + " (" + std::to_string(sizeof(U)) + " bytes needed, " +
           std::to_string(remaining()) + " left)");
    const U v = load_le<U>(p + pos);
    pos += sizeof(U);
    return v;
  }
  std::string read_string(const std::string& what);
};
}  // namespace detail

namespace detail {
// Serialisation of metadata values (kept apart from gguf_file so both the reader and the writer
// see one definition of the layout).
struct gguf_codec {
  static std::uint64_t min_size(gguf_value_type t);

  static gguf_value_type read_type(detail::gguf_reader& r, const std::string& what);

  template <class V>
  static V read_scalar(detail::gguf_reader& r, const std::string& what) {
    if constexpr (std::is_same_v<V, std::string>) {
      return r.read_string(what);
    } else if constexpr (std::is_same_v<V, bool>) {
      const auto b = r.read<std::uint8_t>(what);
      if (b > 1) {
        r.pos -= 1;
        r.fail(what + " is a BOOL with byte value " + std::to_string(b) + " (must be 0 or 1)");
      }
      return b == 1;
    } else {
      return r.read<V>(what);
    }
  }

  template <class V>
  static gguf_value read_array_of(detail::gguf_reader& r, std::uint64_t n, const std::string& what, int depth) {
    std::vector<V> items;
    items.reserve(std::size_t(n));  // n was checked against the bytes left
    for (std::uint64_t i = 0; i < n; ++i) {
      if constexpr (std::is_same_v<V, gguf_value>)
        items.push_back(read_array(r, what + "[" + std::to_string(i) + "]", depth + 1));
      else
        items.push_back(read_scalar<V>(r, what + "[" + std::to_string(i) + "]"));
    }
    return gguf_value::array(std::move(items));
  }

  // After the ARRAY type tag: element type, count, elements.
  static gguf_value read_array(detail::gguf_reader& r, const std::string& what, int depth);

  static gguf_value read_value(detail::gguf_reader& r, gguf_value_type t, const std::string& what);

  // ---- writing ----
  using bytes = std::vector<std::uint8_t>;
  template <class U>
  static void put(bytes& out, U v) {
    std::uint8_t b[sizeof(U)];
    detail::store_le<U>(b, v);
    out.insert(out.end(), b, b + sizeof(U));
  }
  static void put_string(bytes& out, const std::string& s);
  // Everything after the type tag (for an array: element type, count, elements).
  static void write_payload(bytes& out, const gguf_value& v);
  template <class E>
  static void write_element(bytes& out, const E& e) {
    if constexpr (std::is_same_v<E, std::string>) {
      put_string(out, e);
    } else if constexpr (std::is_same_v<E, bool>) {
      out.push_back(e ? 1 : 0);
    } else if constexpr (std::is_same_v<E, gguf_value>) {
      write_payload(out, e);  // an item of an array of arrays: element type, count, items
    } else {
      put<E>(out, e);
    }
  }
  static void write_value(bytes& out, const gguf_value& v);
};
}  // namespace detail

// A GGUF file in memory: ordered metadata and ordered tensors.
class gguf_file {
 public:
  gguf_file() = default;

  // ---- metadata ----

  // Sets key (keeps its position if present, else appends). value_error for an invalid key, or
  // a general.alignment that is not a UINT32 power of two.
  void set(const std::string& key, gguf_value v);
  bool contains(const std::string& key) const { return find(key) != nullptr; }
  const gguf_value* find(const std::string& key) const;
  // The value of key; io_error naming the file if it is missing.
  const gguf_value& at(const std::string& key) const;
  // The scalar at key as exactly V; io_error naming the file, the key and both types otherwise.
  template <gguf_scalar V>
  const V& get(const std::string& key) const {
    const gguf_value& v = at(key);
    if (v.type() != detail::gguf_type_of<V>::value)
      throw io_error(where() + ": metadata key '" + key + "' is " + v.type_str() + ", expected " +
                     gguf_value_type_name(detail::gguf_type_of<V>::value));
    return v.get<V>();
  }
  void erase(const std::string& key);
  const std::vector<std::pair<std::string, gguf_value>>& metadata() const { return kv_; }

  std::uint32_t alignment() const;

  // ---- tensors ----

  // Adds raw bytes; ne in ggml order. value_error for a bad or duplicate name, unknown type,
  // bad dims or a byte count that does not match.
  void add_tensor(const std::string& name, ggml_type type, std::vector<std::uint64_t> ne,
                  std::vector<std::uint8_t> data);
  // Adds a row-major tensor (shape [..., b, a] -> ne [a, b, ...]) stored as F32, F16, BF16 or F64
  // (rounding to nearest even).
  template <std::floating_point T>
  void add_tensor(const std::string& name, const tensor<T>& t, ggml_type type = ggml_type::F32) {
    std::vector<std::uint64_t> ne(t.shape().rbegin(), t.shape().rend());
    std::vector<std::uint8_t> bytes;
    const std::size_t n = t.size();
    const T* in = t.data();
    switch (type) {
      case ggml_type::F32:
        bytes.resize(n * 4);
        for (std::size_t i = 0; i < n; ++i) detail::store_le<float>(bytes.data() + 4 * i, float(in[i]));
        break;
      case ggml_type::F64:
        bytes.resize(n * 8);
        for (std::size_t i = 0; i < n; ++i) detail::store_le<double>(bytes.data() + 8 * i, double(in[i]));
        break;
      case ggml_type::F16:
        bytes.resize(n * 2);
        for (std::size_t i = 0; i < n; ++i)
          detail::store_le<std::uint16_t>(bytes.data() + 2 * i, peft::detail::double_to_half(double(in[i])));
        break;
      case ggml_type::BF16:
        bytes.resize(n * 2);
        for (std::size_t i = 0; i < n; ++i)
          detail::store_le<std::uint16_t>(bytes.data() + 2 * i, peft::detail::double_to_bf16(double(in[i])));
        break;
      default:
        throw value_error("gguf: cannot store tensor '" + name + "' as " + ggml_type_name(type) +
                          " (F32, F16, BF16 or F64)");
    }
    add_tensor(name, type, std::move(ne), std::move(bytes));
  }
  bool has_tensor(const std::string& name) const { return index_.count(name) != 0; }
  const gguf_tensor& tensor_at(const std::string& name) const;
  // The tensor converted to T with its row-major shape (ne reversed).
  template <std::floating_point T>
  tensor<T> get_tensor(const std::string& name) const {
    const gguf_tensor& g = tensor_at(name);
    tensor<T> t = tensor<T>::from_shape(g.shape());
    detail::gguf_decode<T>(g, t.data(), where() + ": tensor '" + name + "'");
    return t;
  }
  void erase_tensor(const std::string& name);
  // Tensors in file order.
  const std::vector<std::pair<std::string, gguf_tensor>>& tensors() const { return tensors_; }
  std::vector<std::string> tensor_names() const;

  // Where this file came from ("<memory>" or its path), for messages.
  const std::string& source() const { return source_; }

  // ---- bytes ----

  std::vector<std::uint8_t> serialize() const;
  void save(const std::string& path) const;

  static gguf_file parse(const void* data, std::size_t size, const std::string& source = "<memory>");

  static gguf_file load(const std::string& path);

 private:
  std::string where() const { return "gguf '" + source_ + "'"; }

  static std::optional<std::string> key_problem(const std::string& key);
  static std::optional<std::string> name_problem(const std::string& name);
  static void check_key(const std::string& key);
  void check_new_tensor(const std::string& name) const;
  void rebuild_index();

  void write_to(std::vector<std::uint8_t>& out) const;

  std::vector<std::pair<std::string, gguf_value>> kv_;
  std::vector<std::pair<std::string, gguf_tensor>> tensors_;
  std::map<std::string, std::size_t> index_;
  std::string source_ = "<memory>";
};

// ---- definitions: here (inline) for header-only programs; in the compiled library only in
// src/io.cpp (PEFT_UNIT_IO), so that they are defined once ----
#if !defined(PEFT_COMPILED_LIB) || defined(PEFT_UNIT_IO)
PEFT_INLINE const char* gguf_value_type_name(gguf_value_type t) {
  switch (t) {
    case gguf_value_type::uint8: return "UINT8";
    case gguf_value_type::int8: return "INT8";
    case gguf_value_type::uint16: return "UINT16";
    case gguf_value_type::int16: return "INT16";
    case gguf_value_type::uint32: return "UINT32";
    case gguf_value_type::int32: return "INT32";
    case gguf_value_type::float32: return "FLOAT32";
    case gguf_value_type::boolean: return "BOOL";
    case gguf_value_type::string: return "STRING";
    case gguf_value_type::array: return "ARRAY";
    case gguf_value_type::uint64: return "UINT64";
    case gguf_value_type::int64: return "INT64";
    case gguf_value_type::float64: return "FLOAT64";
  }
  return "?";
}

PEFT_INLINE std::optional<ggml_type_traits> ggml_traits(std::uint32_t id) {
  constexpr std::uint32_t K = 256;  // QK_K, the super-block of the k-quants
  switch (id) {
    case 0: return ggml_type_traits{"F32", 1, 4};
    case 1: return ggml_type_traits{"F16", 1, 2};
    case 2: return ggml_type_traits{"Q4_0", 32, 2 + 16};
    case 3: return ggml_type_traits{"Q4_1", 32, 2 + 2 + 16};
    case 6: return ggml_type_traits{"Q5_0", 32, 2 + 4 + 16};
    case 7: return ggml_type_traits{"Q5_1", 32, 2 + 2 + 4 + 16};
    case 8: return ggml_type_traits{"Q8_0", 32, 2 + 32};
    case 9: return ggml_type_traits{"Q8_1", 32, 4 + 4 + 32};
    case 10: return ggml_type_traits{"Q2_K", K, 2 + 2 + K / 16 + K / 4};
    case 11: return ggml_type_traits{"Q3_K", K, 2 + K / 4 + K / 8 + 12};
    case 12: return ggml_type_traits{"Q4_K", K, 2 + 2 + K / 2 + 12};
    case 13: return ggml_type_traits{"Q5_K", K, 2 + 2 + K / 2 + K / 8 + 12};
    case 14: return ggml_type_traits{"Q6_K", K, 2 + K / 2 + K / 4 + K / 16};
    case 15: return ggml_type_traits{"Q8_K", K, 4 + K + K / 8};
    case 16: return ggml_type_traits{"IQ2_XXS", K, 2 + K / 4};
    case 17: return ggml_type_traits{"IQ2_XS", K, 2 + K / 4 + K / 32};
    case 18: return ggml_type_traits{"IQ3_XXS", K, 2 + K / 4 + K / 8};
    case 19: return ggml_type_traits{"IQ1_S", K, 2 + K / 8 + K / 16};
    case 20: return ggml_type_traits{"IQ4_NL", 32, 2 + 16};
    case 21: return ggml_type_traits{"IQ3_S", K, 2 + K / 4 + K / 8 + K / 32 + 4};
    case 22: return ggml_type_traits{"IQ2_S", K, 2 + K / 4 + K / 16};
    case 23: return ggml_type_traits{"IQ4_XS", K, 2 + 2 + K / 2 + K / 64};
    case 24: return ggml_type_traits{"I8", 1, 1};
    case 25: return ggml_type_traits{"I16", 1, 2};
    case 26: return ggml_type_traits{"I32", 1, 4};
    case 27: return ggml_type_traits{"I64", 1, 8};
    case 28: return ggml_type_traits{"F64", 1, 8};
    case 29: return ggml_type_traits{"IQ1_M", K, K / 8 + K / 16 + K / 32};
    case 30: return ggml_type_traits{"BF16", 1, 2};
    case 34: return ggml_type_traits{"TQ1_0", K, 2 + 4 * 13};
    case 35: return ggml_type_traits{"TQ2_0", K, 2 + 64};
    case 39: return ggml_type_traits{"MXFP4", 32, 1 + 16};
    case 40: return ggml_type_traits{"NVFP4", 64, 4 + 32};
    case 41: return ggml_type_traits{"Q1_0", 128, 2 + 16};
    case 42: return ggml_type_traits{"Q2_0", 64, 2 + 16};
    default: return std::nullopt;
  }
}
PEFT_INLINE ggml_type_traits ggml_traits(ggml_type t) {
  auto tr = ggml_traits(std::uint32_t(t));
  if (!tr) throw value_error("gguf: unknown ggml type " + std::to_string(std::uint32_t(t)));
  return *tr;
}
PEFT_INLINE const char* ggml_type_name(ggml_type t) {
  auto tr = ggml_traits(std::uint32_t(t));
  return tr ? tr->name : "?";
}
PEFT_INLINE bool ggml_type_decodable(ggml_type t) {
  switch (t) {
    case ggml_type::F32: case ggml_type::F16: case ggml_type::BF16: case ggml_type::F64:
    case ggml_type::I8: case ggml_type::I16: case ggml_type::I32: case ggml_type::I64:
    case ggml_type::Q8_0: case ggml_type::Q4_0: case ggml_type::Q4_1:
      return true;
    default:
      return false;
  }
}

PEFT_INLINE std::size_t gguf_value::array_size() const {
  return std::visit([](const auto& vec) { return vec.size(); }, array_ref("array_size"));
}

PEFT_INLINE std::int64_t gguf_value::to_int64() const {
  return std::visit(
      [this](const auto& x) -> std::int64_t {
        using X = std::decay_t<decltype(x)>;
        if constexpr (std::is_integral_v<X> && !std::is_same_v<X, bool>) {
          if constexpr (std::is_same_v<X, std::uint64_t>)
            if (x > std::uint64_t(std::numeric_limits<std::int64_t>::max()))
              throw value_error("gguf_value: UINT64 " + std::to_string(x) + " does not fit in int64");
          return std::int64_t(x);
        } else {
          throw value_error(std::string("gguf_value: holds ") + type_str() + ", not an integer");
        }
      },
      v_);
}
PEFT_INLINE std::uint64_t gguf_value::to_uint64() const {
  if (std::holds_alternative<std::uint64_t>(v_)) return std::get<std::uint64_t>(v_);
  const std::int64_t x = to_int64();
  if (x < 0) throw value_error("gguf_value: " + std::to_string(x) + " is negative");
  return std::uint64_t(x);
}
PEFT_INLINE double gguf_value::to_double() const {
  if (auto* f = std::get_if<float>(&v_)) return *f;
  if (auto* d = std::get_if<double>(&v_)) return *d;
  if (std::holds_alternative<std::uint64_t>(v_)) return double(std::get<std::uint64_t>(v_));
  return double(to_int64());
}

PEFT_INLINE std::string gguf_value::type_str() const {
  if (!is_array()) return gguf_value_type_name(type());
  return std::string("ARRAY of ") + gguf_value_type_name(elem_type());
}

PEFT_INLINE const gguf_value::array_t& gguf_value::array_ref(const char* op) const {
  if (const auto* a = std::get_if<array_t>(&v_)) return *a;
  throw value_error(std::string("gguf_value::") + op + ": holds " +
                    gguf_value_type_name(scalar_type()) + ", not an ARRAY");
}
PEFT_INLINE bool gguf_value::equals(const gguf_value& o) const { return v_ == o.v_; }

namespace detail {
PEFT_INLINE std::optional<std::string> gguf_check_dims(std::uint32_t type_id, const std::vector<std::uint64_t>& ne,
                                                       std::uint64_t& nbytes) {
  const auto tr = ggml_traits(type_id);
  if (!tr) return "unknown ggml type " + std::to_string(type_id);
  if (ne.size() > gguf_max_dims)
    return std::to_string(ne.size()) + " dimensions (at most " + std::to_string(gguf_max_dims) + ")";
  constexpr std::uint64_t imax = std::uint64_t(std::numeric_limits<std::int64_t>::max());
  std::uint64_t n = 1;
  bool zero = false;
  for (auto d : ne) {
    if (d > imax) return "dimension " + std::to_string(d) + " exceeds int64";
    if (d == 0) zero = true;
  }
  if (!zero)
    for (auto d : ne) {
      if (n > imax / d) return "element count " + shape_str(ne) + " overflows int64";
      n *= d;
    }
  else
    n = 0;
  if (!ne.empty() && ne[0] % tr->block != 0)
    return std::string("ne[0] = ") + std::to_string(ne[0]) + " is not a multiple of " + tr->name +
           "'s block size " + std::to_string(tr->block);
  if (ne.empty() && tr->block != 1)
    return std::string("a 0-d tensor of block type ") + tr->name;
  const std::uint64_t blocks = n / tr->block;
  if (blocks > imax / tr->size) return "byte count of " + shape_str(ne) + " overflows int64";
  nbytes = blocks * tr->size;
  return std::nullopt;
}

PEFT_INLINE std::string gguf_reader::read_string(const std::string& what) {
  const auto n = read<std::uint64_t>(what + " length");
  if (n > remaining())
    fail(what + " length " + std::to_string(n) + " exceeds the " + std::to_string(remaining()) +
         " bytes left in the file");
  std::string s(reinterpret_cast<const char*>(p + pos), std::size_t(n));
  pos += n;
  return s;
}

PEFT_INLINE std::uint64_t gguf_codec::min_size(gguf_value_type t) {
  switch (t) {
    case gguf_value_type::uint8: case gguf_value_type::int8: case gguf_value_type::boolean: return 1;
    case gguf_value_type::uint16: case gguf_value_type::int16: return 2;
    case gguf_value_type::uint32: case gguf_value_type::int32: case gguf_value_type::float32: return 4;
    case gguf_value_type::uint64: case gguf_value_type::int64: case gguf_value_type::float64: return 8;
    case gguf_value_type::string: return 8;
    case gguf_value_type::array: return 12;
  }
  return 1;
}

PEFT_INLINE gguf_value_type gguf_codec::read_type(detail::gguf_reader& r, const std::string& what) {
  const auto t = r.read<std::uint32_t>(what + " type");
  if (t > 12) r.fail(what + " has unknown value type " + std::to_string(t));
  return gguf_value_type(t);
}

PEFT_INLINE gguf_value gguf_codec::read_array(detail::gguf_reader& r, const std::string& what, int depth) {
  if (depth > gguf_max_depth)
    r.fail(what + ": arrays nest deeper than " + std::to_string(gguf_max_depth) + " levels");
  const auto et = read_type(r, what + " element");
  const auto n = r.read<std::uint64_t>(what + " count");
  if (n > r.remaining() / min_size(et))
    r.fail(what + " claims " + std::to_string(n) + " " + gguf_value_type_name(et) + " elements, more than the " +
           std::to_string(r.remaining()) + " bytes left can hold");
  switch (et) {
    case gguf_value_type::uint8: return read_array_of<std::uint8_t>(r, n, what, depth);
    case gguf_value_type::int8: return read_array_of<std::int8_t>(r, n, what, depth);
    case gguf_value_type::uint16: return read_array_of<std::uint16_t>(r, n, what, depth);
    case gguf_value_type::int16: return read_array_of<std::int16_t>(r, n, what, depth);
    case gguf_value_type::uint32: return read_array_of<std::uint32_t>(r, n, what, depth);
    case gguf_value_type::int32: return read_array_of<std::int32_t>(r, n, what, depth);
    case gguf_value_type::float32: return read_array_of<float>(r, n, what, depth);
    case gguf_value_type::boolean: return read_array_of<bool>(r, n, what, depth);
    case gguf_value_type::string: return read_array_of<std::string>(r, n, what, depth);
    case gguf_value_type::array: return read_array_of<gguf_value>(r, n, what, depth);
    case gguf_value_type::uint64: return read_array_of<std::uint64_t>(r, n, what, depth);
    case gguf_value_type::int64: return read_array_of<std::int64_t>(r, n, what, depth);
    case gguf_value_type::float64: return read_array_of<double>(r, n, what, depth);
  }
  r.fail(what + ": unreachable");
}

PEFT_INLINE gguf_value gguf_codec::read_value(detail::gguf_reader& r, gguf_value_type t, const std::string& what) {
  switch (t) {
    case gguf_value_type::uint8: return read_scalar<std::uint8_t>(r, what);
    case gguf_value_type::int8: return read_scalar<std::int8_t>(r, what);
    case gguf_value_type::uint16: return read_scalar<std::uint16_t>(r, what);
    case gguf_value_type::int16: return read_scalar<std::int16_t>(r, what);
    case gguf_value_type::uint32: return read_scalar<std::uint32_t>(r, what);
    case gguf_value_type::int32: return read_scalar<std::int32_t>(r, what);
    case gguf_value_type::float32: return read_scalar<float>(r, what);
    case gguf_value_type::boolean: return read_scalar<bool>(r, what);
    case gguf_value_type::string: return read_scalar<std::string>(r, what);
    case gguf_value_type::array: return read_array(r, what, 1);
    case gguf_value_type::uint64: return read_scalar<std::uint64_t>(r, what);
    case gguf_value_type::int64: return read_scalar<std::int64_t>(r, what);
    case gguf_value_type::float64: return read_scalar<double>(r, what);
  }
  r.fail(what + ": unreachable");
}

PEFT_INLINE void gguf_codec::put_string(bytes& out, const std::string& s) {
  put<std::uint64_t>(out, s.size());
  out.insert(out.end(), s.begin(), s.end());
}
PEFT_INLINE void gguf_codec::write_payload(bytes& out, const gguf_value& v) {
  std::visit(
      [&](const auto& x) {
        using X = std::decay_t<decltype(x)>;
        if constexpr (std::is_same_v<X, gguf_value::array_t>) {
          put<std::uint32_t>(out, std::uint32_t(x.index()));
          std::visit(
              [&](const auto& vec) {
                put<std::uint64_t>(out, vec.size());
                for (const auto& e : vec) write_element(out, e);
              },
              x);
        } else {
          write_element(out, x);
        }
      },
      v.v_);
}
PEFT_INLINE void gguf_codec::write_value(bytes& out, const gguf_value& v) {
  put<std::uint32_t>(out, std::uint32_t(v.type()));
  write_payload(out, v);
}
}  // namespace detail

PEFT_INLINE void gguf_file::set(const std::string& key, gguf_value v) {
  check_key(key);
  if (key == "general.alignment") {
    if (v.type() != gguf_value_type::uint32)
      throw value_error("gguf: general.alignment must be UINT32, got " + v.type_str());
    const auto a = v.get<std::uint32_t>();
    if (a == 0 || (a & (a - 1)) != 0)
      throw value_error("gguf: general.alignment " + std::to_string(a) + " is not a power of two");
  }
  for (auto& kv : kv_)
    if (kv.first == key) {
      kv.second = std::move(v);
      return;
    }
  kv_.emplace_back(key, std::move(v));
}
PEFT_INLINE const gguf_value* gguf_file::find(const std::string& key) const {
  for (auto& kv : kv_)
    if (kv.first == key) return &kv.second;
  return nullptr;
}
PEFT_INLINE const gguf_value& gguf_file::at(const std::string& key) const {
  if (auto* v = find(key)) return *v;
  throw io_error(where() + ": missing metadata key '" + key + "'");
}
PEFT_INLINE void gguf_file::erase(const std::string& key) {
  kv_.erase(std::remove_if(kv_.begin(), kv_.end(), [&](auto& kv) { return kv.first == key; }), kv_.end());
}

PEFT_INLINE std::uint32_t gguf_file::alignment() const {
  const gguf_value* a = find("general.alignment");
  return a ? a->get<std::uint32_t>() : gguf_default_alignment;
}

PEFT_INLINE void gguf_file::add_tensor(const std::string& name, ggml_type type, std::vector<std::uint64_t> ne,
                                       std::vector<std::uint8_t> data) {
  check_new_tensor(name);
  std::uint64_t nbytes = 0;
  if (auto bad = detail::gguf_check_dims(std::uint32_t(type), ne, nbytes))
    throw value_error("gguf: tensor '" + name + "': " + *bad);
  if (nbytes != data.size())
    throw value_error("gguf: tensor '" + name + "' has " + std::to_string(data.size()) + " bytes, " +
                      ggml_type_name(type) + " ne=" + shape_str(ne) + " needs " + std::to_string(nbytes));
  index_.emplace(name, tensors_.size());
  tensors_.emplace_back(name, gguf_tensor{type, std::move(ne), std::move(data)});
}
PEFT_INLINE const gguf_tensor& gguf_file::tensor_at(const std::string& name) const {
  auto it = index_.find(name);
  if (it == index_.end()) throw io_error(where() + ": no tensor '" + name + "'");
  return tensors_[it->second].second;
}
PEFT_INLINE void gguf_file::erase_tensor(const std::string& name) {
  auto it = index_.find(name);
  if (it == index_.end()) return;
  tensors_.erase(tensors_.begin() + std::ptrdiff_t(it->second));
  rebuild_index();
}
PEFT_INLINE std::vector<std::string> gguf_file::tensor_names() const {
  std::vector<std::string> n;
  for (auto& t : tensors_) n.push_back(t.first);
  return n;
}

PEFT_INLINE std::vector<std::uint8_t> gguf_file::serialize() const {
  std::vector<std::uint8_t> out;
  write_to(out);
  return out;
}
PEFT_INLINE void gguf_file::save(const std::string& path) const {
  const auto bytes = serialize();
  detail::write_file_atomic(path, [&](detail::file_sink& s) { s.write(bytes.data(), bytes.size()); });
}

PEFT_INLINE gguf_file gguf_file::parse(const void* data, std::size_t size, const std::string& source) {
  const std::string w = "gguf '" + source + "'";
  detail::gguf_reader r{static_cast<const std::uint8_t*>(data), size, 0, w};
  gguf_file f;
  f.source_ = source;

  if (size < 4 || std::memcmp(data, "GGUF", 4) != 0) {
    if (size < 4) r.fail("file is " + std::to_string(size) + " bytes, too short for the magic");
    r.fail("bad magic (not a GGUF file)");
  }
  r.pos = 4;
  const auto version = r.read<std::uint32_t>("version");
  if (version != 2 && version != 3) {
    if (version == 0x03000000u || version == 0x02000000u)
      r.fail("big-endian GGUF files are not supported");
    r.fail("unsupported GGUF version " + std::to_string(version) + " (2 and 3 are read)");
  }
  const auto n_tensors = r.read<std::uint64_t>("tensor count");
  const auto n_kv = r.read<std::uint64_t>("metadata count");
  // Smallest encodings: a key-value is >= 8+1+4+1 bytes, a tensor info >= 8+1+4+4+8.
  if (n_kv > r.remaining() / 14)
    r.fail("metadata count " + std::to_string(n_kv) + " is more than the " + std::to_string(r.remaining()) +
           " bytes left can hold");
  if (n_tensors > r.remaining() / 25)
    r.fail("tensor count " + std::to_string(n_tensors) + " is more than the " + std::to_string(r.remaining()) +
           " bytes left can hold");

  std::map<std::string, std::size_t> seen;
  for (std::uint64_t i = 0; i < n_kv; ++i) {
    const std::string kw = "metadata key " + std::to_string(i);
    const std::size_t at = std::size_t(r.pos);
    std::string key = r.read_string(kw);
    if (auto bad = key_problem(key)) {
      r.pos = at;
      r.fail(kw + " " + *bad);
    }
    if (seen.count(key)) {
      r.pos = at;
      r.fail("duplicate metadata key '" + key + "'");
    }
    const std::string vw = "value of '" + key + "'";
    const auto t = detail::gguf_codec::read_type(r, vw);
    gguf_value v = detail::gguf_codec::read_value(r, t, vw);
    seen.emplace(key, f.kv_.size());
    f.kv_.emplace_back(std::move(key), std::move(v));
  }
  std::uint32_t align = gguf_default_alignment;
  if (const gguf_value* a = f.find("general.alignment")) {
    if (a->type() != gguf_value_type::uint32)
      r.fail("general.alignment is " + a->type_str() + ", must be UINT32");
    align = a->get<std::uint32_t>();
    if (align == 0 || (align & (align - 1)) != 0)
      r.fail("general.alignment " + std::to_string(align) + " is not a power of two");
  }

  struct info {
    std::string name;
    ggml_type type;
    std::vector<std::uint64_t> ne;
    std::uint64_t offset, nbytes;
  };
  std::vector<info> infos;
  for (std::uint64_t i = 0; i < n_tensors; ++i) {
    const std::string tw = "tensor " + std::to_string(i);
    const std::size_t at = std::size_t(r.pos);
    std::string name = r.read_string(tw + " name");
    if (auto bad = name_problem(name)) {
      r.pos = at;
      r.fail(tw + " name " + *bad);
    }
    if (f.index_.count(name)) {
      r.pos = at;
      r.fail("duplicate tensor '" + name + "'");
    }
    const std::string nw = "tensor '" + name + "'";
    const auto n_dims = r.read<std::uint32_t>(nw + " n_dims");
    if (n_dims > gguf_max_dims)
      r.fail(nw + " has " + std::to_string(n_dims) + " dimensions (at most " + std::to_string(gguf_max_dims) + ")");
    std::vector<std::uint64_t> ne(n_dims);
    for (auto& d : ne) d = r.read<std::uint64_t>(nw + " dims");
    const auto type_id = r.read<std::uint32_t>(nw + " type");
    std::uint64_t nbytes = 0;
    if (auto bad = detail::gguf_check_dims(type_id, ne, nbytes)) r.fail(nw + ": " + *bad);
    const auto offset = r.read<std::uint64_t>(nw + " offset");
    if (offset % align != 0)
      r.fail(nw + " offset " + std::to_string(offset) + " is not a multiple of the alignment " + std::to_string(align));
    f.index_.emplace(name, infos.size());
    infos.push_back(info{std::move(name), ggml_type(type_id), std::move(ne), offset, nbytes});
  }

  const std::uint64_t data_start = detail::gguf_pad(r.pos, align);
  if (n_tensors == 0) {
    // Writers differ on padding a file without tensors; allow none, some or all of it.
    if (size > data_start)
      throw io_error(w + ": " + std::to_string(size - r.pos) + " trailing bytes after the tensor infos");
    return f;
  }
  if (data_start > size)
    r.fail("file ends before the data section (which starts at byte " + std::to_string(data_start) + ")");
  const std::uint64_t data_size = size - data_start;
  std::vector<const info*> by_offset;
  for (auto& t : infos) {
    if (t.offset > data_size || t.nbytes > data_size - t.offset)
      throw io_error(w + ": tensor '" + t.name + "' bytes [" + std::to_string(t.offset) + ", +" +
                     std::to_string(t.nbytes) + ") lie outside the " + std::to_string(data_size) +
                     "-byte data section");
    by_offset.push_back(&t);
  }
  std::stable_sort(by_offset.begin(), by_offset.end(),
                   [](const info* a, const info* b) { return a->offset < b->offset; });
  std::uint64_t end = 0;
  const info* prev = nullptr;
  for (const info* t : by_offset) {
    if (prev && t->offset < end)
      throw io_error(w + ": tensor '" + t->name + "' at offset " + std::to_string(t->offset) +
                     " overlaps tensor '" + prev->name + "' [" + std::to_string(prev->offset) + ", " +
                     std::to_string(end) + ")");
    if (t->offset > detail::gguf_pad(end, align))
      throw io_error(w + ": gap of " + std::to_string(t->offset - end) + " bytes before tensor '" + t->name +
                     "' (only alignment padding may separate tensors)");
    end = t->offset + t->nbytes;
    prev = t;
  }
  if (data_size > detail::gguf_pad(end, align))
    throw io_error(w + ": " + std::to_string(data_size - end) + " trailing bytes after the last tensor");

  const std::uint8_t* base = static_cast<const std::uint8_t*>(data) + data_start;
  f.tensors_.reserve(infos.size());
  for (auto& t : infos)
    f.tensors_.emplace_back(std::move(t.name),
                            gguf_tensor{t.type, std::move(t.ne),
                                        std::vector<std::uint8_t>(base + t.offset, base + t.offset + t.nbytes)});
  return f;
}

PEFT_INLINE gguf_file gguf_file::load(const std::string& path) {
  const std::string bytes =
      detail::read_file_bytes(path, std::numeric_limits<std::uintmax_t>::max(), "gguf");
  return parse(bytes.data(), bytes.size(), path);
}

PEFT_INLINE std::optional<std::string> gguf_file::key_problem(const std::string& key) {
  if (key.empty()) return std::string("is empty");
  if (key.size() > gguf_max_key) return "is " + std::to_string(key.size()) + " bytes long (at most 65535)";
  if (!detail::valid_utf8(key)) return std::string("is not valid UTF-8");
  return std::nullopt;
}
PEFT_INLINE std::optional<std::string> gguf_file::name_problem(const std::string& name) {
  if (name.empty()) return std::string("is empty");
  if (name.size() > gguf_max_name)
    return "'" + name.substr(0, 80) + "' is " + std::to_string(name.size()) + " bytes long (at most " +
           std::to_string(gguf_max_name) + ")";
  if (!detail::valid_utf8(name)) return std::string("is not valid UTF-8");
  return std::nullopt;
}
PEFT_INLINE void gguf_file::check_key(const std::string& key) {
  if (auto bad = key_problem(key)) throw value_error("gguf: metadata key " + *bad);
}
PEFT_INLINE void gguf_file::check_new_tensor(const std::string& name) const {
  if (auto bad = name_problem(name)) throw value_error("gguf: tensor name " + *bad);
  if (index_.count(name)) throw value_error("gguf: duplicate tensor '" + name + "'");
}
PEFT_INLINE void gguf_file::rebuild_index() {
  index_.clear();
  for (std::size_t i = 0; i < tensors_.size(); ++i) index_.emplace(tensors_[i].first, i);
}

PEFT_INLINE void gguf_file::write_to(std::vector<std::uint8_t>& out) const {
  const std::uint64_t align = alignment();
  out.insert(out.end(), {'G', 'G', 'U', 'F'});
  detail::gguf_codec::put<std::uint32_t>(out, 3);
  detail::gguf_codec::put<std::uint64_t>(out, tensors_.size());
  detail::gguf_codec::put<std::uint64_t>(out, kv_.size());
  for (auto& [k, v] : kv_) {
    detail::gguf_codec::put_string(out, k);
    detail::gguf_codec::write_value(out, v);
  }
  std::uint64_t offset = 0;
  for (auto& [name, t] : tensors_) {
    detail::gguf_codec::put_string(out, name);
    detail::gguf_codec::put<std::uint32_t>(out, std::uint32_t(t.ne.size()));
    for (auto d : t.ne) detail::gguf_codec::put<std::uint64_t>(out, d);
    detail::gguf_codec::put<std::uint32_t>(out, std::uint32_t(t.type));
    detail::gguf_codec::put<std::uint64_t>(out, offset);
    offset += detail::gguf_pad(t.data.size(), align);
  }
  if (tensors_.empty()) return;
  out.resize(std::size_t(detail::gguf_pad(out.size(), align)), 0);
  for (auto& [name, t] : tensors_) {
    out.insert(out.end(), t.data.begin(), t.data.end());
    out.resize(std::size_t(detail::gguf_pad(out.size(), align)), 0);
  }
}
#endif  // !PEFT_COMPILED_LIB || PEFT_UNIT_IO

// Every decodable tensor of a GGUF file converted to T, by name, with row-major shapes.
template <std::floating_point T>
std::map<std::string, tensor<T>> load_gguf_tensors(const std::string& path) {
  const auto f = gguf_file::load(path);
  std::map<std::string, tensor<T>> out;
  for (auto& [name, t] : f.tensors()) out.emplace(name, f.get_tensor<T>(name));
  return out;
}

}  // namespace peft::io
