#pragma once
// Learning-rate schedules as multiplicative factors of each group's base lr (so LoRA+ groups
// keep their lr ratio), with the formulas of Hugging Face transformers' get_*_schedule_with_warmup.
// A schedule is any type with `double factor(std::size_t step) const`; lr_scheduler applies one
// to an optimizer, like torch's LambdaLR: at construction it sets lr = base·factor(0), then
// each step() advances one step (call it after optimizer.step()).
#include <algorithm>
#include <cmath>
#include <concepts>
#include <cstddef>
#include <functional>
#include <numbers>
#include <string>
#include <utility>
#include <vector>

#include "peft/core/error.hpp"
#include "peft/optim/optimizer.hpp"

namespace peft::optim {

template <class S>
concept lr_schedule = requires(const S& s, std::size_t step) {
  { s.factor(step) } -> std::convertible_to<double>;
};

namespace schedule_detail {
inline double warmup_factor(std::size_t step, std::size_t warmup) {
  return double(step) / double(std::max<std::size_t>(1, warmup));
}
inline void check_steps(const char* who, std::size_t warmup, std::size_t total) {
  if (total == 0) throw value_error(std::string(who) + ": total_steps must be > 0");
  if (warmup > total)
    throw value_error(std::string(who) + ": warmup_steps " + std::to_string(warmup) +
                      " > total_steps " + std::to_string(total));
}
}  // namespace schedule_detail

// factor = 1.
struct constant_schedule {
  double factor(std::size_t) const { return 1.0; }
  double lr(std::size_t step, double base_lr) const { return base_lr * factor(step); }
};

// Linear warmup from 0, then constant (get_constant_schedule_with_warmup).
class warmup_constant_schedule {
 public:
  explicit warmup_constant_schedule(std::size_t warmup_steps) : warmup_(warmup_steps) {}
  double factor(std::size_t step) const {
    return step < warmup_ ? schedule_detail::warmup_factor(step, warmup_) : 1.0;
  }
  double lr(std::size_t step, double base_lr) const { return base_lr * factor(step); }
  std::size_t warmup_steps() const { return warmup_; }

 private:
  std::size_t warmup_;
};

// Linear warmup from 0 over warmup_steps, then linear decay to 0 at total_steps
// (get_linear_schedule_with_warmup); 0 after total_steps.
class warmup_linear_schedule {
 public:
  warmup_linear_schedule(std::size_t warmup_steps, std::size_t total_steps)
      : warmup_(warmup_steps), total_(total_steps) {
    schedule_detail::check_steps("warmup_linear_schedule", warmup_, total_);
  }
  double factor(std::size_t step) const {
    if (step < warmup_) return schedule_detail::warmup_factor(step, warmup_);
    if (step >= total_) return 0.0;
    return double(total_ - step) / double(std::max<std::size_t>(1, total_ - warmup_));
  }
  double lr(std::size_t step, double base_lr) const { return base_lr * factor(step); }
  std::size_t warmup_steps() const { return warmup_; }
  std::size_t total_steps() const { return total_; }

 private:
  std::size_t warmup_, total_;
};

// Linear warmup from 0, then cosine decay from 1 to min_lr_ratio at total_steps
// (get_cosine_schedule_with_warmup; with min_lr_ratio > 0,
// get_cosine_with_min_lr_schedule_with_warmup's min_lr_rate). num_cycles = 0.5 is a half
// cosine. Unlike transformers, progress is clamped at 1: past total_steps the factor stays at
// its final value instead of following the cosine back up.
class warmup_cosine_schedule {
 public:
  warmup_cosine_schedule(std::size_t warmup_steps, std::size_t total_steps,
                         double min_lr_ratio = 0.0, double num_cycles = 0.5)
      : warmup_(warmup_steps), total_(total_steps), min_(min_lr_ratio), cycles_(num_cycles) {
    schedule_detail::check_steps("warmup_cosine_schedule", warmup_, total_);
    if (!(min_ >= 0 && min_ <= 1))
      throw value_error("warmup_cosine_schedule: invalid min_lr_ratio " +
                        peft::detail::hparam_str(min_) + " (must be in [0, 1])");
    if (!(cycles_ > 0) || !std::isfinite(cycles_))
      throw value_error("warmup_cosine_schedule: invalid num_cycles " +
                        peft::detail::hparam_str(cycles_) + " (must be > 0)");
  }
  double factor(std::size_t step) const {
    if (step < warmup_) return schedule_detail::warmup_factor(step, warmup_);
    const double progress = std::min(
        1.0, double(step - warmup_) / double(std::max<std::size_t>(1, total_ - warmup_)));
    const double c = 0.5 * (1.0 + std::cos(std::numbers::pi * cycles_ * 2.0 * progress));
    return std::max(0.0, c * (1 - min_) + min_);
  }
  double lr(std::size_t step, double base_lr) const { return base_lr * factor(step); }
  std::size_t warmup_steps() const { return warmup_; }
  std::size_t total_steps() const { return total_; }
  double min_lr_ratio() const { return min_; }
  double num_cycles() const { return cycles_; }

 private:
  std::size_t warmup_, total_;
  double min_, cycles_;
};

// Drives an optimizer's learning rates from a schedule: lr_g = base_lr_g · factor(step), with
// the base lrs read from the optimizer at construction.
template <class T>
class lr_scheduler {
 public:
  template <lr_schedule S>
  lr_scheduler(optimizer<T>& opt, S schedule, std::size_t start_step = 0)
      : opt_(&opt),
        factor_([s = std::move(schedule)](std::size_t k) { return double(s.factor(k)); }),
        step_(start_step) {
    for (std::size_t g = 0; g < opt.num_groups(); ++g) base_.push_back(opt.lr(g));
    apply();
  }

  // Advances one step and sets the new learning rates.
  void step() {
    ++step_;
    apply();
  }
  // Jumps to a step (resuming from a checkpoint).
  void set_step(std::size_t step) {
    step_ = step;
    apply();
  }
  std::size_t current_step() const { return step_; }
  double factor() const { return factor_(step_); }
  const std::vector<double>& base_lrs() const { return base_; }

 private:
  void apply() {
    if (opt_->num_groups() != base_.size())
      throw value_error("lr_scheduler: optimizer has " + std::to_string(opt_->num_groups()) +
                        " groups, scheduler was built for " + std::to_string(base_.size()));
    const double f = factor_(step_);
    for (std::size_t g = 0; g < base_.size(); ++g) opt_->set_lr(g, base_[g] * f);
  }

  optimizer<T>* opt_;
  std::function<double(std::size_t)> factor_;
  std::size_t step_;
  std::vector<double> base_;
};

}  // namespace peft::optim
