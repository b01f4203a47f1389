#pragma once
// The record of a training run: a CSV with one row per optimizer step and one per evaluation,
//   phase,step,epoch,loss,lr,<metric>
//   adapt,1,0,0.7321,0.001,
//   adapt,235,1,,,0.9124
// (empty cells where a row has no value), and a PNG of the curves drawn by gnuplot when it is
// installed (Debian: gnuplot-nox). Examples print where both files went.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <string>

#include "sysinfo.hpp"
#include "table.hpp"

namespace examples {

class run_log {
 public:
  run_log() = default;
  // metric: the evaluation column's name ("accuracy", "bpb").
  run_log(const std::filesystem::path& path, std::string metric)
      : path_(path), metric_(std::move(metric)) {
    if (path.has_parent_path()) std::filesystem::create_directories(path.parent_path());
    out_.open(path);
    if (!out_) throw std::runtime_error("run_log: cannot write '" + path.string() + "'");
    out_ << "phase,step,epoch,loss,lr," << metric_ << '\n';
  }
  bool is_open() const { return out_.is_open(); }
  const std::filesystem::path& path() const { return path_; }
  const std::string& metric() const { return metric_; }

  void step(const std::string& phase, std::size_t step, std::size_t epoch, double loss, double lr) {
    if (!out_.is_open()) return;
    out_ << table::csv_cell(phase) << ',' << step << ',' << epoch << ',' << num(loss) << ','
         << num(lr) << ",\n";
  }
  void eval(const std::string& phase, std::size_t step, std::size_t epoch, double metric) {
    if (!out_.is_open()) return;
    out_ << table::csv_cell(phase) << ',' << step << ',' << epoch << ",,," << num(metric) << '\n';
    out_.flush();
  }
  void flush() {
    if (out_.is_open()) out_.flush();
  }

 private:
  static std::string num(double v) {
    if (!std::isfinite(v)) return "";
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.6g", v);
    return buf;
  }

  std::filesystem::path path_;
  std::string metric_;
  std::ofstream out_;
};

// Draws loss (left) and the metric (right) against the step for every phase in the CSV, into
// png. Returns false (and says why on stderr) when gnuplot is missing or fails.
inline bool plot_run(const std::filesystem::path& csv, const std::filesystem::path& png,
                     const std::string& title, const std::string& metric,
                     const std::vector<std::string>& phases) {
  if (!program_available("gnuplot")) {
    std::fprintf(stderr, "plot: gnuplot not found (Debian: gnuplot-nox); no PNG written\n");
    return false;
  }
  const auto script = std::filesystem::path(png).replace_extension(".gp");
  {
    std::ofstream gp(script);
    if (!gp) return false;
    gp << "if (strstrt(GPVAL_TERMINALS, 'pngcairo') > 0) {\n"
       << "  set terminal pngcairo size 1100,420 font ',10'\n"
       << "} else {\n"
       << "  set terminal png size 1100,420\n"
       << "}\n"
       << "set termoption noenhanced\n"  // underscores in names are not subscripts
       << "set output '" << png.string() << "'\n"
       << "set datafile separator ','\n"
       << "set multiplot layout 1,2 title '" << title << "'\n"
       << "set grid\nset xlabel 'step'\n"
       << "set ylabel 'training loss (smoothed)'\n";
    // Exponential smoothing inside gnuplot keeps the curve readable for noisy mini-batches.
    gp << "plot ";
    for (std::size_t i = 0; i < phases.size(); ++i) {
      const std::string& p = phases[i];
      gp << (i ? ", \\\n     " : "") << "s" << i << " = NaN, '" << csv.string()
         << "' using 2:(strcol(1) eq '" << p << "' && strcol(4) ne '' ? "
         << "(s" << i << " = (s" << i << " != s" << i << ") ? $4 : 0.9*s" << i << " + 0.1*$4) : NaN) "
         << "with lines lw 2 title '" << p << "'";
    }
    gp << "\nset ylabel '" << metric << "'\nset key bottom right\n";
    gp << "plot ";
    for (std::size_t i = 0; i < phases.size(); ++i) {
      const std::string& p = phases[i];
      gp << (i ? ", \\\n     " : "") << "'" << csv.string() << "' using 2:(strcol(1) eq '" << p
         << "' && strcol(6) ne '' ? $6 : NaN) with linespoints pt 7 title '" << p << "'";
    }
    gp << "\nunset multiplot\n";
  }
  const std::string cmd = "gnuplot '" + script.string() + "' 2>&1";
  if (std::system(cmd.c_str()) != 0) {
    std::fprintf(stderr, "plot: gnuplot failed on %s\n", script.string().c_str());
    return false;
  }
  return std::filesystem::exists(png);
}

}  // namespace examples
