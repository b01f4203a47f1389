#pragma once
// Small process utilities shared by the examples (not part of the library): wall-clock
// stopwatch, peak resident memory, byte/duration formatting, the cache directory, and whether a
// program is on PATH.
#include <spawn.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

extern char** environ;

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

// Peak resident set size of this process so far. Linux: VmHWM of /proc/self/status, the
// high-water mark of this address space only (getrusage's ru_maxrss also keeps the peak of the
// image before exec, i.e. of the parent that spawned us, and is not reset by reset_peak_rss).
// Elsewhere getrusage (ru_maxrss is in KiB on Linux and the BSDs).
namespace detail {
// A "Name:   123 kB" field of /proc/self/status in bytes, 0 when absent.
inline std::size_t proc_status_bytes(const char* field) {
  std::ifstream status("/proc/self/status");
  const std::string key = std::string(field) + ":";
  for (std::string line; std::getline(status, line);)
    if (line.rfind(key, 0) == 0)
      return std::size_t(std::strtoull(line.c_str() + key.size(), nullptr, 10)) * 1024;
  return 0;
}
}  // namespace detail

inline std::size_t peak_rss_bytes() {
  if (const std::size_t hwm = detail::proc_status_bytes("VmHWM")) return hwm;
  rusage u{};
  if (getrusage(RUSAGE_SELF, &u) != 0) return 0;
  return std::size_t(u.ru_maxrss) * 1024;
}

// Resets this process's peak-RSS high-water mark (Linux >= 4.0: "5" > /proc/self/clear_refs),
// so peak_rss_bytes() afterwards measures one phase. Returns whether the reset took effect
// (VmHWM came down to the current RSS), false where unsupported.
inline bool reset_peak_rss() {
  {
    std::ofstream f("/proc/self/clear_refs");
    if (!f) return false;
    f << "5";
    f.flush();
    if (!f) return false;
  }
  const std::size_t hwm = detail::proc_status_bytes("VmHWM"), rss = detail::proc_status_bytes("VmRSS");
  return hwm != 0 && hwm <= rss + (std::size_t(1) << 20);
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

// Runs argv (argv[0] a path) with its stdout captured; stderr is inherited. Returns the exit
// status (-1 if it could not start or was killed).
inline int run_capture(const std::vector<std::string>& args, std::string& out) {
  int fd[2];
  if (pipe(fd) != 0) return -1;
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, fd[1], 1);
  posix_spawn_file_actions_addclose(&fa, fd[0]);
  posix_spawn_file_actions_addclose(&fa, fd[1]);
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  pid_t pid = 0;
  const int rc = posix_spawn(&pid, argv[0], &fa, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  close(fd[1]);
  if (rc != 0) {
    close(fd[0]);
    return -1;
  }
  char buf[4096];
  ssize_t k;
  while ((k = read(fd[0], buf, sizeof buf)) > 0) out.append(buf, std::size_t(k));
  close(fd[0]);
  int status = 0;
  if (waitpid(pid, &status, 0) < 0) return -1;
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

// This program's own path (to re-run itself as a worker).
inline std::string self_exe() {
  std::error_code ec;
  auto p = std::filesystem::read_symlink("/proc/self/exe", ec);
  return ec ? std::string() : p.string();
}

inline bool stdout_is_terminal() { return isatty(fileno(stdout)) != 0; }

}  // namespace examples
