#pragma once
// NumPy .npy files (numpy.lib.format), strictly: the arrays `peft apply` and the examples read
// and write.
//   [6]  magic "\x93NUMPY"
//   [2]  version major, minor: 1.0 (u16 header length), 2.0 / 3.0 (u32 header length; 3.0 only
//        changes the header's encoding to UTF-8)
//   [2|4] header length, little-endian
//   [n]  header: a Python dict literal {'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }
//        padded with spaces and a '\n'
//   [..] data, C order, exactly prod(shape) · itemsize bytes
// Every byte is untrusted. Accepted: versions 1.0, 2.0, 3.0; descr '<f2', '<f4', '<f8' (little-
// endian IEEE floats); fortran_order False; a header of at most npy_max_header bytes holding
// exactly those three keys once each, in the literal syntax numpy writes (strings in single or
// double quotes without escapes, True / False, tuples of non-negative decimal integers with
// Python's comma rules; a Python-2 'L' suffix is tolerated); at most npy_max_dims dims whose
// byte count fits in 63 bits; the data exactly that long. Anything else is an io_error naming the
// file and what is wrong (big-endian, other dtypes and Fortran order are refused by name).
// Writing produces numpy.save's bytes exactly (version 1.0, keys sorted, numpy's growth-axis
// spaces, total header length a multiple of 64), atomically.
#include <algorithm>
#include <bit>
#include <cctype>
#include <cerrno>
#include <concepts>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "peft/core/config.hpp"
#include "peft/core/error.hpp"
#include "peft/core/tensor.hpp"
#include "peft/detail/half.hpp"
#include "peft/io/detail/util.hpp"

namespace peft::io {

enum class npy_dtype : std::uint8_t { f2, f4, f8 };

inline std::size_t npy_dtype_size(npy_dtype t) { return t == npy_dtype::f2 ? 2 : t == npy_dtype::f4 ? 4 : 8; }
// The descr string ("<f4").
inline const char* npy_dtype_name(npy_dtype t) {
  return t == npy_dtype::f2 ? "<f2" : t == npy_dtype::f4 ? "<f4" : "<f8";
}
// '<f4' for float, '<f8' for double.
template <std::floating_point T>
constexpr npy_dtype npy_dtype_of() {
  static_assert(std::numeric_limits<T>::is_iec559 && (sizeof(T) == 4 || sizeof(T) == 8),
                "npy_dtype_of: only float and double map to an .npy dtype");
  return sizeof(T) == 4 ? npy_dtype::f4 : npy_dtype::f8;
}

// Limits on untrusted headers. numpy's own reader refuses headers over 10000 bytes by default;
// 64 KiB leaves room for hand-written v2/v3 files. numpy 2 allows 64 dims.
inline constexpr std::size_t npy_max_header = 65536;
inline constexpr std::size_t npy_max_dims = 64;

// What the preamble and header say.
struct npy_header {
  unsigned major = 1, minor = 0;
  npy_dtype dtype = npy_dtype::f4;
  shape_t shape;
  std::size_t data_offset = 0;  // bytes before the data
  std::uint64_t data_bytes = 0;  // prod(shape) · itemsize
};

// An array as stored: dtype, shape and the raw little-endian C-order bytes.
struct npy_array {
  npy_dtype dtype = npy_dtype::f4;
  shape_t shape;
  std::vector<std::uint8_t> data;
};

namespace detail {

// A cursor over the header text with the literal grammar of numpy's headers.
class npy_header_parser {
 public:
  npy_header_parser(std::string_view text, const std::string& where) : s_(text), w_(where) {}

  npy_header parse();

 private:
  [[noreturn]] void fail(const std::string& msg) const {
    throw io_error(w_ + ": header: " + msg + " (at byte " + std::to_string(pos_) + " of the header)");
  }
  bool at(char c) const { return pos_ < s_.size() && s_[pos_] == c; }
  void ws() {
    while (pos_ < s_.size() && (s_[pos_] == ' ' || s_[pos_] == '\t' || s_[pos_] == '\n' || s_[pos_] == '\r')) ++pos_;
  }
  std::string shown_char() const;
  void expect(char c, const std::string& msg) {
    if (!at(c)) fail(msg + ", found " + shown_char());
    ++pos_;
  }
  std::string string_literal(const std::string& what);
  bool word(std::string_view w);
  bool boolean();
  std::size_t integer();
  shape_t tuple();
  npy_dtype dtype_of(const std::string& d) const;

  std::string_view s_;
  std::size_t pos_ = 0;
  std::string w_;
};

// Parses magic, version and header from the first `avail` bytes of a file of `total` bytes; the
// data is checked against `total`.
PEFT_INLINE npy_header parse_npy_preamble(const std::uint8_t* b, std::size_t avail, std::uint64_t total,
                                     const std::string& w);

template <std::floating_point T>
void decode_npy(npy_dtype t, const std::uint8_t* p, std::size_t n, T* out) {
  auto load = [](const std::uint8_t* q, auto tag) {
    using U = decltype(tag);
    U v;
    if constexpr (std::endian::native == std::endian::little) {
      std::memcpy(&v, q, sizeof(U));
    } else {
      std::uint8_t r[sizeof(U)];
      for (std::size_t i = 0; i < sizeof(U); ++i) r[i] = q[sizeof(U) - 1 - i];
      std::memcpy(&v, r, sizeof(U));
    }
    return v;
  };
  switch (t) {
    case npy_dtype::f2:
      for (std::size_t i = 0; i < n; ++i) out[i] = T(peft::detail::half_to_float(load(p + 2 * i, std::uint16_t{})));
      return;
    case npy_dtype::f4:
      if constexpr (std::is_same_v<T, float> && std::endian::native == std::endian::little) {
        if (n) std::memcpy(out, p, n * 4);
      } else {
        for (std::size_t i = 0; i < n; ++i) out[i] = T(load(p + 4 * i, float{}));
      }
      return;
    case npy_dtype::f8:
      if constexpr (std::is_same_v<T, double> && std::endian::native == std::endian::little) {
        if (n) std::memcpy(out, p, n * 8);
      } else {
        for (std::size_t i = 0; i < n; ++i) out[i] = T(load(p + 8 * i, double{}));
      }
      return;
  }
}

template <std::floating_point T>
void encode_npy(const T* in, std::size_t n, npy_dtype t, std::uint8_t* out) {
  auto store = [](std::uint8_t* q, auto v) {
    std::memcpy(q, &v, sizeof(v));
    if constexpr (std::endian::native != std::endian::little) std::reverse(q, q + sizeof(v));
  };
  switch (t) {
    case npy_dtype::f2:
      for (std::size_t i = 0; i < n; ++i) store(out + 2 * i, peft::detail::double_to_half(double(in[i])));
      return;
    case npy_dtype::f4:
      for (std::size_t i = 0; i < n; ++i) store(out + 4 * i, float(in[i]));
      return;
    case npy_dtype::f8:
      for (std::size_t i = 0; i < n; ++i) store(out + 8 * i, double(in[i]));
      return;
  }
}

// numpy.lib.format's header for (dtype, C order, shape), with the preamble: version 1.0 (every
// header this writes is far below 65535 bytes).
PEFT_INLINE std::string npy_header_bytes(npy_dtype t, const shape_t& shape);

}  // namespace detail

// ---- reading ----

// Parses a complete .npy image (raw bytes, dtype and shape kept). `source` names it in errors.
PEFT_INLINE npy_array parse_npy(const void* data, std::size_t size, const std::string& source = "<memory>");

// Reads the header of a file (and checks the data length against the file size).
PEFT_INLINE npy_header read_npy_header(const std::string& path);

// Reads and validates a file, keeping the raw bytes.
PEFT_INLINE npy_array read_npy(const std::string& path);

// The array's values as T (exact for '<f2' and '<f4' to float, and anything to double).
template <std::floating_point T>
tensor<T> npy_to_tensor(const npy_array& a) {
  tensor<T> t = tensor<T>::from_shape(a.shape);
  const std::size_t n = a.data.size() / npy_dtype_size(a.dtype);
  if (n != t.size())
    throw value_error("npy_to_tensor: " + std::to_string(a.data.size()) + " bytes for shape " + shape_str(a.shape) +
                      " of " + npy_dtype_name(a.dtype));
  detail::decode_npy<T>(a.dtype, a.data.data(), n, t.data());
  return t;
}

template <std::floating_point T>
tensor<T> load_npy(const std::string& path) {
  return npy_to_tensor<T>(read_npy(path));
}

// ---- writing ----

// A tensor stored as `type` (rounding to nearest even for '<f2' and for double -> '<f4').
template <std::floating_point T>
npy_array make_npy(const tensor<T>& t, npy_dtype type = npy_dtype_of<T>()) {
  npy_array a;
  a.dtype = type;
  a.shape = shape_of(t);
  a.data.resize(t.size() * npy_dtype_size(type));
  detail::encode_npy(t.data(), t.size(), type, a.data.data());
  return a;
}

// The file image, byte for byte what numpy.save writes for this dtype and shape.
PEFT_INLINE std::vector<std::uint8_t> serialize_npy(const npy_array& a);

// Writes the array atomically (<path>.tmp.<pid>, fsync, rename).
PEFT_INLINE void save_npy(const std::string& path, const npy_array& a);
template <std::floating_point T>
void save_npy(const std::string& path, const tensor<T>& t, npy_dtype type = npy_dtype_of<T>()) {
  save_npy(path, make_npy(t, type));
}

// ---- definitions: here (inline) for header-only programs; in the compiled library only in
// src/io.cpp (PEFT_UNIT_IO), so that they are defined once ----
#if !defined(PEFT_COMPILED_LIB) || defined(PEFT_UNIT_IO)
namespace detail {
PEFT_INLINE npy_header npy_header_parser::parse() {
  npy_header h;
  bool have_descr = false, have_fortran = false, have_shape = false;
  ws();
  expect('{', "the header must be a dict literal starting with '{'");
  ws();
  bool first = true;
  while (!at('}')) {
    if (!first) {
      // After an entry: ',' then another entry or the closing brace (trailing comma).
      expect(',', "expected ',' or '}' after a dict entry");
      ws();
      if (at('}')) break;
    }
    first = false;
    const std::string key = string_literal("a dict key");
    ws();
    expect(':', "expected ':' after key '" + key + "'");
    ws();
    if (key == "descr") {
      if (have_descr) fail("duplicate key 'descr'");
      have_descr = true;
      h.dtype = dtype_of(string_literal("the value of 'descr'"));
    } else if (key == "fortran_order") {
      if (have_fortran) fail("duplicate key 'fortran_order'");
      have_fortran = true;
      if (boolean())
        fail("fortran_order is True (column-major data) and only C order is supported; save a C-contiguous "
             "array (numpy.ascontiguousarray)");
    } else if (key == "shape") {
      if (have_shape) fail("duplicate key 'shape'");
      have_shape = true;
      h.shape = tuple();
    } else {
      fail("unexpected key '" + key + "' (an .npy header has exactly 'descr', 'fortran_order', 'shape')");
    }
    ws();
  }
  ++pos_;  // '}'
  ws();
  if (pos_ != s_.size()) fail("unexpected " + shown_char() + " after the header dict");
  if (!have_descr) fail("missing key 'descr'");
  if (!have_fortran) fail("missing key 'fortran_order'");
  if (!have_shape) fail("missing key 'shape'");
  return h;
}

PEFT_INLINE std::string npy_header_parser::shown_char() const {
  if (pos_ >= s_.size()) return "end of header";
  const auto c = static_cast<unsigned char>(s_[pos_]);
  if (c >= 0x20 && c < 0x7f) return std::string("'") + char(c) + "'";
  static const char* hex = "0123456789abcdef";
  return std::string("byte 0x") + hex[c >> 4] + hex[c & 15];
}
PEFT_INLINE std::string npy_header_parser::string_literal(const std::string& what) {
  if (!at('\'') && !at('"')) fail("expected a quoted string for " + what + ", found " + shown_char());
  const char q = s_[pos_++];
  const std::size_t b = pos_;
  while (pos_ < s_.size() && s_[pos_] != q) {
    const auto c = static_cast<unsigned char>(s_[pos_]);
    if (c == '\\' || c < 0x20 || c >= 0x7f) fail("unsupported character in a string literal: " + shown_char());
    ++pos_;
  }
  if (pos_ >= s_.size()) fail("unterminated string literal");
  std::string out(s_.substr(b, pos_ - b));
  ++pos_;
  return out;
}
PEFT_INLINE bool npy_header_parser::word(std::string_view w) {
  if (s_.substr(pos_, w.size()) != w) return false;
  const std::size_t e = pos_ + w.size();
  if (e < s_.size() && (std::isalnum(static_cast<unsigned char>(s_[e])) || s_[e] == '_')) return false;
  pos_ = e;
  return true;
}
PEFT_INLINE bool npy_header_parser::boolean() {
  if (word("True")) return true;
  if (word("False")) return false;
  fail("fortran_order must be True or False, found " + shown_char());
}
PEFT_INLINE std::size_t npy_header_parser::integer() {
  if (!(pos_ < s_.size() && s_[pos_] >= '0' && s_[pos_] <= '9'))
    fail("expected a non-negative integer dimension, found " + shown_char());
  if (s_[pos_] == '0' && pos_ + 1 < s_.size() && s_[pos_ + 1] >= '0' && s_[pos_ + 1] <= '9')
    fail("dimension with a leading zero");
  constexpr std::uint64_t limit = std::uint64_t(std::numeric_limits<std::int64_t>::max());
  std::uint64_t v = 0;
  while (pos_ < s_.size() && s_[pos_] >= '0' && s_[pos_] <= '9') {
    const unsigned d = unsigned(s_[pos_] - '0');
    if (v > (limit - d) / 10) fail("dimension exceeds 2^63 - 1");
    v = v * 10 + d;
    ++pos_;
  }
  if (at('L')) ++pos_;  // Python 2 long literal, as old numpy wrote
  if (v > std::numeric_limits<std::size_t>::max()) fail("dimension does not fit in size_t");
  return std::size_t(v);
}
PEFT_INLINE shape_t npy_header_parser::tuple() {
  expect('(', "shape must be a tuple");
  shape_t out;
  ws();
  if (at(')')) {
    ++pos_;
    return out;
  }
  bool comma_after_last = false;
  for (;;) {
    if (out.size() == npy_max_dims) fail("shape has more than " + std::to_string(npy_max_dims) + " dims");
    out.push_back(integer());
    ws();
    comma_after_last = false;
    if (at(',')) {
      ++pos_;
      comma_after_last = true;
      ws();
    }
    if (at(')')) break;
    if (!comma_after_last) fail("expected ',' or ')' in the shape tuple, found " + shown_char());
  }
  ++pos_;
  // "(3)" is an int in Python, not a tuple.
  if (out.size() == 1 && !comma_after_last) fail("shape (n) is not a tuple; a 1-D shape is written (n,)");
  return out;
}
PEFT_INLINE npy_dtype npy_header_parser::dtype_of(const std::string& d) const {
  if (d == "<f4") return npy_dtype::f4;
  if (d == "<f8") return npy_dtype::f8;
  if (d == "<f2") return npy_dtype::f2;
  if (d.size() == 3 && (d[0] == '>' || d[0] == '!') && d[1] == 'f')
    fail("descr '" + d + "' is big-endian; only little-endian '<f2', '<f4', '<f8' are supported");
  fail("unsupported descr '" + d + "' (only '<f2', '<f4', '<f8': little-endian float16/32/64)");
}

PEFT_INLINE npy_header parse_npy_preamble(const std::uint8_t* b, std::size_t avail, std::uint64_t total,
                                          const std::string& w) {
  static constexpr std::uint8_t magic[6] = {0x93, 'N', 'U', 'M', 'P', 'Y'};
  if (total < 10) throw io_error(w + ": file is " + std::to_string(total) + " bytes, too short for an .npy preamble");
  if (std::memcmp(b, magic, 6) != 0) throw io_error(w + ": not an .npy file (bad magic; expected \\x93NUMPY)");
  npy_header h;
  h.major = b[6];
  h.minor = b[7];
  if (!((h.major == 1 || h.major == 2 || h.major == 3) && h.minor == 0))
    throw io_error(w + ": unsupported .npy format version " + std::to_string(h.major) + "." + std::to_string(h.minor) +
                   " (1.0, 2.0 or 3.0)");
  const std::size_t len_size = h.major == 1 ? 2 : 4;
  if (total < 8 + len_size)
    throw io_error(w + ": file is " + std::to_string(total) + " bytes, too short for a version " +
                   std::to_string(h.major) + ".0 preamble");
  std::uint64_t n = 0;
  for (std::size_t i = 0; i < len_size; ++i) n |= std::uint64_t(b[8 + i]) << (8 * i);
  if (n > npy_max_header)
    throw io_error(w + ": header length " + std::to_string(n) + " exceeds the limit of " +
                   std::to_string(npy_max_header) + " bytes");
  const std::uint64_t off = 8 + len_size + n;
  if (off > total)
    throw io_error(w + ": header length " + std::to_string(n) + " runs past the end of the " + std::to_string(total) +
                   "-byte file");
  if (off > avail) throw io_error(w + ": internal error: header not in the buffer");
  const std::string_view text(reinterpret_cast<const char*>(b + 8 + len_size), std::size_t(n));
  // Versions 1 and 2 are latin-1, 3 is UTF-8; the grammar above is ASCII in both.
  npy_header parsed = npy_header_parser(text, w).parse();
  parsed.major = h.major;
  parsed.minor = h.minor;
  parsed.data_offset = std::size_t(off);
  // Byte count with overflow checks (a zero dim does not excuse the others: strides would overflow).
  constexpr std::uint64_t limit = std::uint64_t(std::numeric_limits<std::int64_t>::max());
  std::uint64_t bytes = npy_dtype_size(parsed.dtype);
  bool empty = false;
  for (auto d : parsed.shape) {
    if (d == 0) {
      empty = true;
      continue;
    }
    if (bytes > limit / d)
      throw io_error(w + ": shape " + shape_str(parsed.shape) + " of " + npy_dtype_name(parsed.dtype) +
                     " overflows a 63-bit byte count");
    bytes *= d;
  }
  parsed.data_bytes = empty ? 0 : bytes;
  if (total - off != parsed.data_bytes)
    throw io_error(w + ": shape " + shape_str(parsed.shape) + " of " + npy_dtype_name(parsed.dtype) + " needs " +
                   std::to_string(parsed.data_bytes) + " data bytes, the file has " + std::to_string(total - off) +
                   (total - off < parsed.data_bytes ? " (truncated)" : " (trailing bytes)"));
  return parsed;
}

PEFT_INLINE std::string npy_header_bytes(npy_dtype t, const shape_t& shape) {
  std::string h = "{'descr': '";
  h += npy_dtype_name(t);
  h += "', 'fortran_order': False, 'shape': (";
  for (std::size_t i = 0; i < shape.size(); ++i) {
    if (i) h += ", ";
    h += std::to_string(shape[i]);
  }
  if (shape.size() == 1) h += ',';
  h += "), }";
  // numpy >= 1.23 leaves room to grow the first axis in place (GROWTH_AXIS_MAX_DIGITS = 21).
  if (!shape.empty()) {
    const std::size_t digits = std::to_string(shape[0]).size();
    if (digits < 21) h.append(21 - digits, ' ');
  }
  // hlen includes the final '\n'; numpy pads to ARRAY_ALIGN = 64 (a full 64 when already aligned).
  const std::size_t hlen = h.size() + 1;
  const std::size_t pad = 64 - (10 + hlen) % 64;
  h.append(pad, ' ');
  h += '\n';
  std::string pre("\x93NUMPY\x01\x00", 8);
  pre += char(h.size() & 0xff);
  pre += char((h.size() >> 8) & 0xff);
  return pre + h;
}
}  // namespace detail

PEFT_INLINE npy_array parse_npy(const void* data, std::size_t size, const std::string& source) {
  const auto* b = static_cast<const std::uint8_t*>(data);
  const std::string w = "npy '" + source + "'";
  const npy_header h = detail::parse_npy_preamble(b, size, size, w);
  npy_array a;
  a.dtype = h.dtype;
  a.shape = h.shape;
  a.data.assign(b + h.data_offset, b + size);
  return a;
}

PEFT_INLINE npy_header read_npy_header(const std::string& path) {
  const std::string w = "npy '" + path + "'";
  std::error_code ec;
  const std::uintmax_t size = std::filesystem::file_size(path, ec);
  if (ec) throw io_error(w + ": cannot read: " + ec.message());
  std::ifstream in(path, std::ios::binary);
  if (!in) throw io_error(w + ": cannot open: " + std::strerror(errno));
  const std::size_t want = std::size_t(std::min<std::uintmax_t>(size, 12 + npy_max_header));
  std::vector<std::uint8_t> pre(want);
  if (want && !in.read(reinterpret_cast<char*>(pre.data()), std::streamsize(want))) throw io_error(w + ": read failed");
  return detail::parse_npy_preamble(pre.data(), want, size, w);
}

PEFT_INLINE npy_array read_npy(const std::string& path) {
  const npy_header h = read_npy_header(path);
  const std::string w = "npy '" + path + "'";
  std::ifstream in(path, std::ios::binary);
  if (!in) throw io_error(w + ": cannot open: " + std::strerror(errno));
  in.seekg(std::streamoff(h.data_offset));
  npy_array a;
  a.dtype = h.dtype;
  a.shape = h.shape;
  a.data.resize(std::size_t(h.data_bytes));
  if (!a.data.empty() && !in.read(reinterpret_cast<char*>(a.data.data()), std::streamsize(a.data.size())))
    throw io_error(w + ": unexpected end of file in the data (file changed while reading?)");
  return a;
}

PEFT_INLINE std::vector<std::uint8_t> serialize_npy(const npy_array& a) {
  std::uint64_t n = npy_dtype_size(a.dtype);
  bool empty = false;
  for (auto d : a.shape) {
    if (d == 0) empty = true;
    else if (n > std::uint64_t(std::numeric_limits<std::int64_t>::max()) / d)
      throw value_error("serialize_npy: shape " + shape_str(a.shape) + " overflows a 63-bit byte count");
    else n *= d;
  }
  if (a.shape.size() > npy_max_dims)
    throw value_error("serialize_npy: " + std::to_string(a.shape.size()) + " dims (at most " +
                      std::to_string(npy_max_dims) + ")");
  if ((empty ? 0 : n) != a.data.size())
    throw value_error("serialize_npy: " + std::to_string(a.data.size()) + " bytes for shape " + shape_str(a.shape) +
                      " of " + npy_dtype_name(a.dtype));
  const std::string h = detail::npy_header_bytes(a.dtype, a.shape);
  std::vector<std::uint8_t> out(h.begin(), h.end());
  out.insert(out.end(), a.data.begin(), a.data.end());
  return out;
}

PEFT_INLINE void save_npy(const std::string& path, const npy_array& a) {
  const auto bytes = serialize_npy(a);
  detail::write_file_atomic(path, [&](detail::file_sink& s) { s.write(bytes.data(), bytes.size()); });
}
#endif  // !PEFT_COMPILED_LIB || PEFT_UNIT_IO

}  // namespace peft::io
