#pragma once
// Small process utilities shared by the examples (not part of the library): wall-clock
// stopwatch, peak resident memory, byte/duration formatting, the cache directory, and whether a
// program is on PATH.
#include <sys/resource.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>

namespace examples {

class stopwatch {
 public:
  stopwatch() : t0_(std::chrono::steady_clock::now()) {}
  void reset() { t0_ = std::chrono::steady_clock::now(); }
  double seconds() const {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count();
  }

 private:
  std::chrono::steady_clock::time_point t0_;
};

// Peak resident set size of this process so far (getrusage: ru_maxrss is in KiB on Linux).
inline std::size_t peak_rss_bytes() {
  rusage u{};
  if (getrusage(RUSAGE_SELF, &u) != 0) return 0;
  return std::size_t(u.ru_maxrss) * 1024;
}

// "12.3 MiB"
inline std::string format_bytes(double b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB"};
  int u = 0;
  while (b >= 1024.0 && u < 3) {
    b /= 1024.0;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, u == 0 ? "%.0f %s" : "%.1f %s", b, units[u]);
  return buf;
}

// "1:05" / "1:02:03" for a duration in seconds.
inline std::string format_duration(double s) {
  if (!(s >= 0) || s > 1e7) return "?";
  const long t = long(s + 0.5);
  char buf[32];
  if (t >= 3600)
    std::snprintf(buf, sizeof buf, "%ld:%02ld:%02ld", t / 3600, (t / 60) % 60, t % 60);
  else
    std::snprintf(buf, sizeof buf, "%ld:%02ld", t / 60, t % 60);
  return buf;
}

// Where examples keep things they can rebuild (pretrained checkpoints): $PEFT_CACHE_DIR, else
// $XDG_CACHE_HOME/peft, else ~/.cache/peft, else the system temp directory.
inline std::filesystem::path default_cache_dir() {
  if (const char* d = std::getenv("PEFT_CACHE_DIR"); d && *d) return d;
  if (const char* d = std::getenv("XDG_CACHE_HOME"); d && *d)
    return std::filesystem::path(d) / "peft";
  if (const char* h = std::getenv("HOME"); h && *h)
    return std::filesystem::path(h) / ".cache" / "peft";
  return std::filesystem::temp_directory_path() / "peft-cache";
}

// Whether `program` can be run (the shell's `command -v`).
inline bool program_available(const std::string& program) {
  const std::string cmd = "command -v " + program + " >/dev/null 2>&1";
  return std::system(cmd.c_str()) == 0;
}

inline bool stdout_is_terminal() { return isatty(fileno(stdout)) != 0; }

}  // namespace examples
