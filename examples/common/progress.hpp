#pragma once
// Training progress for the examples: on a terminal, one bar redrawn in place
//   pretrain [##########..........]  350/705  loss 0.4321  lr 9.1e-04  5120 img/s  ETA 0:07
// and otherwise (pipes, CI logs) a plain line every `every` steps and at the end, so logs stay
// readable. The shown loss is an exponential moving average (raw per-batch losses are noisy).
#include <cmath>
#include <cstdio>
#include <string>

#include "sysinfo.hpp"

namespace examples {

class progress {
 public:
  // total: steps; items_per_step: examples (or tokens) per step, for the throughput;
  // unit: what an item is ("img", "tok"). every: plain-mode reporting interval (0 = ~10 lines).
  progress(std::string label, std::size_t total, std::size_t items_per_step,
           std::string unit = "it", std::size_t every = 0)
      : label_(std::move(label)), total_(total), items_(items_per_step), unit_(std::move(unit)),
        every_(every ? every : std::max<std::size_t>(1, total / 10)),
        tty_(stdout_is_terminal()) {}

  // Call after step `step` (1-based) with that step's loss and learning rate.
  void update(std::size_t step, double loss, double lr) {
    step_ = step;
    ema_ = std::isnan(ema_) ? loss : 0.9 * ema_ + 0.1 * loss;
    lr_ = lr;
    if (tty_) {
      const double now = clock_.seconds();
      if (step != total_ && now - last_draw_ < 0.1) return;  // at most 10 redraws per second
      last_draw_ = now;
      draw();
    } else if (step % every_ == 0 || step == total_) {
      std::printf("%s step %zu/%zu  loss %.4f  lr %.2e  %.0f %s/s  elapsed %s\n", label_.c_str(),
                  step, total_, ema_, lr_, rate(), unit_.c_str(),
                  format_duration(clock_.seconds()).c_str());
      std::fflush(stdout);
    }
  }

  // Ends the bar's line (terminal mode) so the next output starts on a new line; a later
  // update() draws the bar again below that output.
  void finish() {
    if (tty_ && drawn_) {
      draw();
      std::printf("\n");
      std::fflush(stdout);
    }
    drawn_ = false;
  }
  ~progress() { finish(); }

  double seconds() const { return clock_.seconds(); }
  double smoothed_loss() const { return ema_; }

 private:
  double rate() const {
    const double s = clock_.seconds();
    return s > 0 ? double(step_ * items_) / s : 0.0;
  }
  void draw() {
    const int width = 20;
    const int filled = total_ ? int(double(width) * double(step_) / double(total_)) : width;
    std::string bar(std::size_t(filled), '#');
    bar.resize(width, '.');
    const double s = clock_.seconds();
    const double eta = step_ ? s / double(step_) * double(total_ - step_) : 0.0;
    std::printf("\r%s [%s] %zu/%zu  loss %.4f  lr %.2e  %.0f %s/s  ETA %s   ", label_.c_str(),
                bar.c_str(), step_, total_, ema_, lr_, rate(), unit_.c_str(),
                format_duration(eta).c_str());
    std::fflush(stdout);
    drawn_ = true;
  }

  std::string label_;
  std::size_t total_, items_;
  std::string unit_;
  std::size_t every_;
  bool tty_;
  stopwatch clock_;
  std::size_t step_ = 0;
  double ema_ = std::nan("");
  double lr_ = 0;
  double last_draw_ = -1;
  bool drawn_ = false;
};

}  // namespace examples
