#pragma once
// The examples' data, all from Debian packages (nothing is downloaded):
//   Fashion-MNIST          dataset-fashion-mnist  /usr/share/datasets/fashion-mnist/*.gz (IDX)
//   King James Bible       bible-kjv              `bible -f gen1:1-rev22:21` (one verse a line)
//   The Devil's Dictionary dict-devil             /usr/share/dictd/devil.dict.dz (dictzip = gzip)
// A missing file throws missing_data naming the package to install.
#include <zlib.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "idx.hpp"
#include "sysinfo.hpp"

namespace examples {

// Data that is not installed; what() says which Debian package provides it.
struct missing_data : std::runtime_error {
  using std::runtime_error::runtime_error;
};

inline missing_data missing(const std::string& what, const std::string& where,
                            const std::string& package) {
  return missing_data(what + " not found (" + where + ").\nInstall it with:  sudo apt-get install " +
                      package + "   (or run scripts/deps.sh)");
}

// A gzip (or plain) file read through zlib.
class gz_file {
 public:
  explicit gz_file(const std::string& path) : f_(gzopen(path.c_str(), "rb")), path_(path) {
    if (!f_) throw std::runtime_error("cannot open '" + path + "'");
    gzbuffer(f_, 1 << 16);
  }
  gz_file(const gz_file&) = delete;
  gz_file& operator=(const gz_file&) = delete;
  ~gz_file() { gzclose(f_); }

  // Reads up to n bytes; fewer only at the end. Throws on a corrupt stream.
  std::size_t read(void* dst, std::size_t n) {
    std::size_t done = 0;
    auto* p = static_cast<unsigned char*>(dst);
    while (done < n) {
      const unsigned chunk = unsigned(std::min<std::size_t>(n - done, 1u << 30));
      const int k = gzread(f_, p + done, chunk);
      if (k < 0) {
        int err = 0;
        const char* msg = gzerror(f_, &err);
        throw std::runtime_error("'" + path_ + "': " + (msg ? msg : "read error"));
      }
      if (k == 0) break;
      done += std::size_t(k);
    }
    return done;
  }

 private:
  gzFile f_;
  std::string path_;
};

// The whole (decompressed) content of a gzip file.
inline std::string read_gzip_text(const std::string& path) {
  gz_file f(path);
  std::string out;
  char buf[1 << 16];
  for (;;) {
    const std::size_t k = f.read(buf, sizeof buf);
    out.append(buf, k);
    if (k < sizeof buf) break;
  }
  return out;
}

// ---------------------------------------------------------------- Fashion-MNIST

inline const char* fashion_mnist_default_dir = "/usr/share/datasets/fashion-mnist";
inline const char* fashion_mnist_class_names[10] = {"T-shirt/top", "Trouser", "Pullover", "Dress",
                                                    "Coat",        "Sandal",  "Shirt",    "Sneaker",
                                                    "Bag",         "Ankle boot"};

// Grayscale images as bytes (n x rows*cols, row-major) with integer labels.
struct image_set {
  std::size_t n = 0, rows = 0, cols = 0;
  std::vector<std::uint8_t> pixels;
  std::vector<std::int64_t> labels;
  std::size_t pixels_per_image() const { return rows * cols; }
};

// split: "train" (60k) or "t10k" (10k). max_items > 0 stops after that many images (the files
// are read sequentially, so small runs decompress only what they use).
inline image_set load_fashion_mnist(const std::string& dir, const std::string& split,
                                    std::size_t max_items = 0) {
  namespace fs = std::filesystem;
  const fs::path img = fs::path(dir) / (split + "-images-idx3-ubyte.gz");
  const fs::path lab = fs::path(dir) / (split + "-labels-idx1-ubyte.gz");
  for (const auto& p : {img, lab})
    if (!fs::exists(p)) throw missing("Fashion-MNIST file " + p.string(), "looked in " + dir,
                                      "dataset-fashion-mnist");
  idx_data images, labels;
  {
    gz_file f(img.string());
    images = read_idx([&](void* d, std::size_t n) { return f.read(d, n); }, 0x00000803u,
                      img.string(), max_items);
  }
  {
    gz_file f(lab.string());
    labels = read_idx([&](void* d, std::size_t n) { return f.read(d, n); }, 0x00000801u,
                      lab.string(), max_items);
  }
  if (images.dims.size() != 3)
    throw std::runtime_error(img.string() + ": expected 3 IDX dimensions [n, rows, cols]");
  if (labels.dims.size() != 1)
    throw std::runtime_error(lab.string() + ": expected 1 IDX dimension [n]");
  if (images.dims[0] != labels.dims[0])
    throw std::runtime_error("Fashion-MNIST " + split + ": " + std::to_string(images.dims[0]) +
                             " images but " + std::to_string(labels.dims[0]) + " labels");
  image_set s;
  s.n = images.dims[0];
  s.rows = images.dims[1];
  s.cols = images.dims[2];
  s.pixels = std::move(images.bytes);
  s.labels.resize(s.n);
  for (std::size_t i = 0; i < s.n; ++i) {
    if (labels.bytes[i] > 9)
      throw std::runtime_error(lab.string() + ": label " + std::to_string(labels.bytes[i]) +
                               " at item " + std::to_string(i) + " is outside 0..9");
    s.labels[i] = labels.bytes[i];
  }
  return s;
}

// The images whose label is in [lo, hi], relabelled to label - lo, at most `limit` of them
// (0 = all), in file order.
inline image_set select_classes(const image_set& s, std::int64_t lo, std::int64_t hi,
                                std::size_t limit = 0) {
  image_set o;
  o.rows = s.rows;
  o.cols = s.cols;
  const std::size_t ppi = s.pixels_per_image();
  for (std::size_t i = 0; i < s.n && (limit == 0 || o.n < limit); ++i) {
    if (s.labels[i] < lo || s.labels[i] > hi) continue;
    o.pixels.insert(o.pixels.end(), s.pixels.begin() + std::ptrdiff_t(i * ppi),
                    s.pixels.begin() + std::ptrdiff_t((i + 1) * ppi));
    o.labels.push_back(s.labels[i] - lo);
    ++o.n;
  }
  return o;
}

// ---------------------------------------------------------------- text corpora

// The King James Bible from the `bible` program, one verse per line with the reference
// ("Ge1:1 ") removed. ~4.3 MB of ASCII.
inline std::string load_bible_kjv() {
  if (!program_available("bible"))
    throw missing("The `bible` program (King James Bible)", "not on PATH", "bible-kjv");
  std::unique_ptr<FILE, int (*)(FILE*)> p(popen("bible -f gen1:1-rev22:21 2>/dev/null", "r"), pclose);
  if (!p) throw std::runtime_error("cannot run `bible`");
  std::string out, line;
  char buf[1 << 16];
  std::size_t k;
  while ((k = std::fread(buf, 1, sizeof buf, p.get())) > 0) {
    for (std::size_t i = 0; i < k; ++i) {
      if (buf[i] != '\n') {
        line += buf[i];
        continue;
      }
      // Drop the verse reference: everything up to the first space.
      const auto sp = line.find(' ');
      if (sp != std::string::npos && line.find(':') < sp) out.append(line, sp + 1);
      else out += line;
      out += '\n';
      line.clear();
    }
  }
  out += line;
  if (out.size() < 1000)
    throw missing("The King James Bible text", "`bible` printed " + std::to_string(out.size()) +
                  " bytes", "bible-kjv");
  return out;
}

inline const char* devil_default_path = "/usr/share/dictd/devil.dict.dz";

// Ambrose Bierce's The Devil's Dictionary (~380 KB), the dictd file decompressed (dictzip is a
// gzip stream), without the dictd "00-database-..." header entries.
inline std::string load_devils_dictionary(const std::string& path = devil_default_path) {
  if (!std::filesystem::exists(path))
    throw missing("The Devil's Dictionary", path, "dict-devil");
  std::string text = read_gzip_text(path);
  // The dictd header entries come first; the book starts at its title.
  const auto start = text.find("THE DEVIL'S DICTIONARY");
  if (start != std::string::npos) {
    const auto line = text.rfind('\n', start);
    text.erase(0, line == std::string::npos ? 0 : line + 1);
  }
  return text;
}

}  // namespace examples
