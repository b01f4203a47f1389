#pragma once
// Private helpers of peft/io: strict UTF-8 validation, a JSON parser that rejects duplicate keys
// and deep nesting (files are untrusted), whole-file reads with a size bound, and atomic writes
// (write <path>.tmp.<pid>, flush to disk, rename over <path>).
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "peft/core/config.hpp"
#include "peft/core/error.hpp"

#if __has_include(<unistd.h>) && __has_include(<fcntl.h>)
#include <fcntl.h>
#include <unistd.h>
#define PEFT_IO_POSIX 1
#else
#define PEFT_IO_POSIX 0
#endif

namespace peft::io::detail {

// Index of the first byte that is not part of valid UTF-8 (no overlong forms, no surrogates,
// nothing above U+10FFFF), or n when all of [p, p+n) is valid.
PEFT_INLINE std::size_t utf8_error_offset(const char* p, std::size_t n);
inline bool valid_utf8(std::string_view s) { return utf8_error_offset(s.data(), s.size()) == s.size(); }

// Parses JSON text strictly: valid UTF-8, no duplicate keys in any object, at most max_depth
// nested containers, nothing but whitespace after the value. Errors are io_error prefixed with
// `where` (e.g. "safetensors 'a.safetensors'").
PEFT_INLINE nlohmann::json parse_json_strict(std::string_view text, int max_depth, const std::string& where);

// JSON type name for messages.
inline std::string json_type(const nlohmann::json& j) { return j.type_name(); }

// Whole file as bytes; at most max_bytes (a larger file is an error, not a truncated read).
PEFT_INLINE std::string read_file_bytes(const std::string& path, std::uintmax_t max_bytes, const std::string& what);

// Where atomic writes put their bytes before the rename.
class file_sink {
 public:
  virtual ~file_sink() = default;
  virtual void write(const void* data, std::size_t n) = 0;
};

#if PEFT_IO_POSIX
class fd_sink : public file_sink {
 public:
  fd_sink(int fd, const std::string& path) : fd_(fd), path_(path) {}
  void write(const void* data, std::size_t n) override;

 private:
  int fd_;
  std::string path_;
};
#else
class stream_sink : public file_sink {
 public:
  stream_sink(std::ofstream& f, const std::string& path) : f_(f), path_(path) {}
  void write(const void* data, std::size_t n) override;

 private:
  std::ofstream& f_;
  std::string path_;
};
#endif

// Writes `path` atomically: body(sink) fills <path>.tmp.<pid>, which is flushed to disk and
// renamed over path, so readers see the old file or the new one, never a partial one. On any
// error the temporary is removed and path is untouched.
template <class Body>
void write_file_atomic(const std::string& path, Body&& body) {
#if PEFT_IO_POSIX
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) throw io_error("cannot create '" + tmp + "' (to write '" + path + "'): " + std::strerror(errno));
  try {
    fd_sink sink(fd, tmp);
    body(static_cast<file_sink&>(sink));
    if (::fsync(fd) != 0) throw io_error("fsync '" + tmp + "': " + std::strerror(errno));
  } catch (...) {
    ::close(fd);
    ::unlink(tmp.c_str());
    throw;
  }
  if (::close(fd) != 0) {
    const int e = errno;
    ::unlink(tmp.c_str());
    throw io_error("close '" + tmp + "': " + std::strerror(e));
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const int e = errno;
    ::unlink(tmp.c_str());
    throw io_error("cannot rename '" + tmp + "' to '" + path + "': " + std::strerror(e));
  }
  // Make the rename itself durable (best effort: some file systems refuse fsync on a directory).
  std::string dir = std::filesystem::path(path).parent_path().string();
  if (dir.empty()) dir = ".";
  const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    (void)::fsync(dfd);
    ::close(dfd);
  }
#else
  const std::string tmp = path + ".tmp";
  try {
    {
      std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
      if (!f) throw io_error("cannot create '" + tmp + "' (to write '" + path + "')");
      stream_sink sink(f, tmp);
      body(static_cast<file_sink&>(sink));
      f.flush();
      if (!f) throw io_error("write '" + tmp + "': flush failed");
    }
    std::filesystem::rename(tmp, path);
  } catch (const std::filesystem::filesystem_error& e) {
    std::error_code ec;
    std::filesystem::remove(tmp, ec);
    throw io_error("cannot rename '" + tmp + "' to '" + path + "': " + e.what());
  } catch (...) {
    std::error_code ec;
    std::filesystem::remove(tmp, ec);
    throw;
  }
#endif
}

// ---- definitions: here (inline) for header-only programs; in the compiled library only in
// src/io.cpp (PEFT_UNIT_IO), so that they are defined once ----
#if !defined(PEFT_COMPILED_LIB) || defined(PEFT_UNIT_IO)
PEFT_INLINE std::size_t utf8_error_offset(const char* p, std::size_t n) {
  const auto* s = reinterpret_cast<const unsigned char*>(p);
  std::size_t i = 0;
  while (i < n) {
    const unsigned c = s[i];
    if (c < 0x80) {
      ++i;
      continue;
    }
    std::size_t len;
    unsigned lo = 0x80, hi = 0xbf;  // allowed range of the second byte
    if (c >= 0xc2 && c <= 0xdf) {
      len = 2;
    } else if (c >= 0xe0 && c <= 0xef) {
      len = 3;
      if (c == 0xe0) lo = 0xa0;   // overlong
      if (c == 0xed) hi = 0x9f;   // UTF-16 surrogates
    } else if (c >= 0xf0 && c <= 0xf4) {
      len = 4;
      if (c == 0xf0) lo = 0x90;   // overlong
      if (c == 0xf4) hi = 0x8f;   // above U+10FFFF
    } else {
      return i;
    }
    if (n - i < len) return i;
    if (s[i + 1] < lo || s[i + 1] > hi) return i;
    for (std::size_t k = 2; k < len; ++k)
      if (s[i + k] < 0x80 || s[i + k] > 0xbf) return i;
    i += len;
  }
  return n;
}

PEFT_INLINE nlohmann::json parse_json_strict(std::string_view text, int max_depth, const std::string& where) {
  if (const auto bad = utf8_error_offset(text.data(), text.size()); bad != text.size())
    throw io_error(where + ": JSON is not valid UTF-8 (byte " + std::to_string(bad) + ")");
  std::vector<std::set<std::string>> keys;  // one entry per open container (arrays: empty)
  auto cb = [&](int, nlohmann::json::parse_event_t ev, nlohmann::json& parsed) {
    using ev_t = nlohmann::json::parse_event_t;
    switch (ev) {
      case ev_t::object_start:
      case ev_t::array_start:
        if (int(keys.size()) >= max_depth)
          throw io_error(where + ": JSON nests deeper than " + std::to_string(max_depth) + " levels");
        keys.emplace_back();
        break;
      case ev_t::object_end:
      case ev_t::array_end:
        if (!keys.empty()) keys.pop_back();
        break;
      case ev_t::key:
        if (!keys.empty() && !keys.back().insert(parsed.get<std::string>()).second)
          throw io_error(where + ": duplicate key '" + parsed.get<std::string>() + "'");
        break;
      case ev_t::value:
        break;
    }
    return true;
  };
  try {
    return nlohmann::json::parse(text.begin(), text.end(), cb);
  } catch (const nlohmann::json::exception& e) {
    throw io_error(where + ": invalid JSON: " + e.what());
  }
}

PEFT_INLINE std::string read_file_bytes(const std::string& path, std::uintmax_t max_bytes, const std::string& what) {
  std::error_code ec;
  const auto size = std::filesystem::file_size(path, ec);
  if (ec) throw io_error(what + " '" + path + "': cannot read: " + ec.message());
  if (size > max_bytes)
    throw io_error(what + " '" + path + "': file is " + std::to_string(size) + " bytes, more than the " +
                   std::to_string(max_bytes) + "-byte limit");
  std::ifstream f(path, std::ios::binary);
  if (!f) throw io_error(what + " '" + path + "': cannot open: " + std::strerror(errno));
  std::string s(std::size_t(size), '\0');
  if (size && !f.read(s.data(), std::streamsize(size)))
    throw io_error(what + " '" + path + "': read failed (file changed while reading?)");
  return s;
}

#if PEFT_IO_POSIX
PEFT_INLINE void fd_sink::write(const void* data, std::size_t n) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    const ::ssize_t w = ::write(fd_, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      throw io_error("write '" + path_ + "': " + std::strerror(errno));
    }
    p += w;
    n -= std::size_t(w);
  }
}
#else
PEFT_INLINE void stream_sink::write(const void* data, std::size_t n) {
  if (!f_.write(static_cast<const char*>(data), std::streamsize(n)))
    throw io_error("write '" + path_ + "': write failed");
}
#endif
#endif  // !PEFT_COMPILED_LIB || PEFT_UNIT_IO

}  // namespace peft::io::detail
