#pragma once
// Reader for the IDX format of (Fashion-)MNIST: a big-endian header
//   0x00 0x00 <type> <ndims>   then ndims uint32 sizes   then the data, row-major
// with type 0x08 = unsigned byte (images: magic 0x00000803, dims [n, rows, cols]; labels:
// magic 0x00000801, dims [n]). The reader pulls bytes through a callable so the same code
// serves gzip files (datasets.hpp, zlib) and in-memory buffers (tests); it validates the magic
// number, the sizes and the length of the data, and can stop after the first max_items items.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <stdexcept>
#include <string>
#include <vector>

namespace examples {

struct idx_data {
  std::vector<std::uint32_t> dims;  // dims[0] = number of items actually read
  std::vector<std::uint8_t> bytes;  // row-major
  std::size_t item_size() const {
    std::size_t s = 1;
    for (std::size_t i = 1; i < dims.size(); ++i) s *= dims[i];
    return s;
  }
};

inline std::string hex32(std::uint32_t v) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "0x%08X", v);
  return buf;
}

// read(dst, n) -> bytes read (< n only at the end of the stream). expected_magic: 0x803 for
// images, 0x801 for labels (unsigned bytes). max_items = 0: all items.
template <class Read>
idx_data read_idx(Read&& read, std::uint32_t expected_magic, const std::string& what,
                  std::size_t max_items = 0) {
  auto read_u32 = [&](const char* field) {
    unsigned char b[4];
    if (read(b, 4) != 4)
      throw std::runtime_error(what + ": truncated IDX header (reading " + field + ")");
    return std::uint32_t(b[0]) << 24 | std::uint32_t(b[1]) << 16 | std::uint32_t(b[2]) << 8 |
           std::uint32_t(b[3]);
  };
  const std::uint32_t magic = read_u32("magic number");
  if (magic != expected_magic)
    throw std::runtime_error(what + ": bad IDX magic number " + hex32(magic) + " (expected " +
                             hex32(expected_magic) + ")");
  const std::uint32_t ndims = magic & 0xFF;
  if (ndims == 0 || ndims > 4)
    throw std::runtime_error(what + ": IDX header claims " + std::to_string(ndims) + " dimensions");
  idx_data out;
  for (std::uint32_t i = 0; i < ndims; ++i) {
    const std::uint32_t d = read_u32("dimension sizes");
    if (d == 0 || d > (1u << 24))
      throw std::runtime_error(what + ": implausible IDX dimension " + std::to_string(i) + " = " +
                               std::to_string(d));
    out.dims.push_back(d);
  }
  std::size_t n = out.dims[0];
  if (max_items && max_items < n) n = max_items;
  const std::size_t item = out.item_size();
  out.bytes.resize(n * item);
  const std::size_t got = out.bytes.empty() ? 0 : read(out.bytes.data(), out.bytes.size());
  if (got != out.bytes.size())
    throw std::runtime_error(what + ": IDX data truncated: " + std::to_string(got) + " of " +
                             std::to_string(out.bytes.size()) + " bytes for " + std::to_string(n) +
                             " items");
  out.dims[0] = std::uint32_t(n);
  return out;
}

// The same over a byte buffer (tests, embedded data).
inline idx_data read_idx_buffer(const std::vector<std::uint8_t>& buf, std::uint32_t expected_magic,
                                const std::string& what, std::size_t max_items = 0) {
  std::size_t pos = 0;
  auto read = [&](void* dst, std::size_t n) {
    const std::size_t k = std::min(n, buf.size() - pos);
    std::copy_n(buf.data() + pos, k, static_cast<std::uint8_t*>(dst));
    pos += k;
    return k;
  };
  return read_idx(read, expected_magic, what, max_items);
}

}  // namespace examples
