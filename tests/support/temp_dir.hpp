#pragma once
// A fresh directory under the system temp dir, unique per process and instance, removed with
// everything in it when the object goes out of scope. Shared by the tests that write files.
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <iterator>
#include <string>
#include <system_error>

namespace peft::test {

struct temp_dir {
  std::filesystem::path path;
  // create = false leaves only the (removed) path, for code that must create the directory itself.
  explicit temp_dir(bool create = true) {
    static std::atomic<int> n{0};
    path = std::filesystem::temp_directory_path() /
           ("peft_test_" + std::to_string(::getpid()) + "_" + std::to_string(n++));
    std::filesystem::remove_all(path);
    if (create) std::filesystem::create_directories(path);
  }
  temp_dir(const temp_dir&) = delete;
  temp_dir& operator=(const temp_dir&) = delete;
  ~temp_dir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  std::string str() const { return path.string(); }
  std::string operator/(const std::string& f) const { return (path / f).string(); }
  std::size_t files() const {
    return std::size_t(std::distance(std::filesystem::directory_iterator(path),
                                     std::filesystem::directory_iterator()));
  }
};

}  // namespace peft::test
