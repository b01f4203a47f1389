#pragma once
// PEFT's two random inits for LoRA (init_lora_weights=True and ="gaussian"): B = 0, so the
// adapter starts as the identity (Δ = 0) and A is random.
#include <cmath>

#include "peft/init/policy.hpp"

namespace peft::init {

// init_lora_weights=True: A ~ kaiming_uniform(a = sqrt(5)) (bound 1/sqrt(in)), B = 0.
struct kaiming_default {
  template <class T>
  void operator()(init_target<T>& t) const {
    fill_kaiming_uniform(t.A, std::sqrt(5.0), t.g);
    t.B.fill(T(0));
  }
};

// init_lora_weights="gaussian": A ~ N(0, (1/r)^2), B = 0.
struct gaussian {
  template <class T>
  void operator()(init_target<T>& t) const {
    const double r = double(t.A.shape()[0]);
    fill_normal(t.A, 0.0, 1.0 / r, t.g);
    t.B.fill(T(0));
  }
};

// Both factors random (no identity at init); used by tests and by methods that start non-zero.
struct random_both {
  double std = 0.02;
  template <class T>
  void operator()(init_target<T>& t) const {
    fill_normal(t.A, 0.0, std, t.g);
    fill_normal(t.B, 0.0, std, t.g);
  }
};

}  // namespace peft::init
