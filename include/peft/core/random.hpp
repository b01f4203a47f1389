#pragma once
// Seeded, reproducible random numbers. The generator (xoshiro256**) and the distributions are
// written out here rather than taken from <random>, whose distributions differ between standard
// libraries: the same seed gives the same bits on every build.
#include <array>
#include <cmath>
#include <cstdint>
#include <numbers>

#include "peft/core/error.hpp"
#include "peft/core/tensor.hpp"

namespace peft {

class rng {
 public:
  using state_type = std::array<std::uint64_t, 4>;

  explicit rng(std::uint64_t seed = 0) { reseed(seed); }

  void reseed(std::uint64_t seed) {
    std::uint64_t x = seed;
    for (auto& w : s_) w = splitmix64(x);
  }

  // An independent stream derived from this generator's seed material and `stream`
  // (e.g. one per parameter); does not advance this generator.
  rng fork(std::uint64_t stream) const {
    std::uint64_t x = s_[0] ^ (s_[1] << 1) ^ (s_[2] << 2) ^ (s_[3] << 3) ^
                      (stream * 0x9E3779B97F4A7C15ULL + 0xD1B54A32D192ED03ULL);
    rng r;
    for (auto& w : r.s_) w = splitmix64(x);
    return r;
  }

  std::uint64_t next_u64() {
    const std::uint64_t result = rotl(s_[1] * 5, 7) * 9;
    const std::uint64_t t = s_[1] << 17;
    s_[2] ^= s_[0];
    s_[3] ^= s_[1];
    s_[1] ^= s_[2];
    s_[0] ^= s_[3];
    s_[2] ^= t;
    s_[3] = rotl(s_[3], 45);
    return result;
  }

  // Uniform in [0, 1) with 53 random bits.
  double uniform() { return double(next_u64() >> 11) * 0x1.0p-53; }
  double uniform(double lo, double hi) { return lo + (hi - lo) * uniform(); }

  // Standard normal by Box-Muller; uses two uniforms per value and caches nothing, so the
  // state is just the four words.
  double normal() {
    double u1 = uniform();
    const double u2 = uniform();
    if (u1 < 1e-300) u1 = 1e-300;
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * std::numbers::pi * u2);
  }
  double normal(double mean, double stddev) { return mean + stddev * normal(); }

  // Uniform integer in [0, n) without modulo bias (Lemire's method with rejection).
  std::uint64_t uniform_int(std::uint64_t n) {
    if (n == 0) throw value_error("rng::uniform_int: n = 0");
    const std::uint64_t threshold = (0 - n) % n;
    for (;;) {
      __extension__ using u128 = unsigned __int128;  // GCC/Clang extension; silences -Wpedantic
      const u128 m = u128(next_u64()) * n;
      if (std::uint64_t(m) >= threshold) return std::uint64_t(m >> 64);
    }
  }

  bool bernoulli(double p) { return uniform() < p; }

  state_type state() const { return s_; }
  void set_state(const state_type& s) {
    if (s[0] == 0 && s[1] == 0 && s[2] == 0 && s[3] == 0)
      throw value_error("rng::set_state: all-zero state is invalid for xoshiro256**");
    s_ = s;
  }

  friend bool operator==(const rng& a, const rng& b) { return a.s_ == b.s_; }

 private:
  static std::uint64_t rotl(std::uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
  static std::uint64_t splitmix64(std::uint64_t& x) {
    std::uint64_t z = (x += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
  }
  state_type s_{};
};

// ---- fills (in place, row-major element order) ----

template <class T>
void fill_uniform(tensor<T>& t, double lo, double hi, rng& g) {
  if (!(lo <= hi)) throw value_error("fill_uniform: lo > hi");
  for (auto& v : t) v = T(g.uniform(lo, hi));
}

template <class T>
void fill_normal(tensor<T>& t, double mean, double stddev, rng& g) {
  if (!(stddev >= 0)) throw value_error("fill_normal: stddev < 0");
  for (auto& v : t) v = T(g.normal(mean, stddev));
}

// fan_in of a weight [out, in, ...] as PyTorch computes it: in * prod(receptive field).
template <class T>
std::size_t fan_in_of(const tensor<T>& t) {
  if (t.dimension() < 2)
    throw shape_error("fan_in: tensor " + shape_str(t.shape()) + " has fewer than 2 dims");
  return t.size() / t.shape()[0];
}

// PyTorch's kaiming_uniform_ (leaky_relu gain): bound = sqrt(2 / (1 + a^2)) * sqrt(3 / fan_in).
// nn.Linear's default init is a = sqrt(5), which gives bound = 1 / sqrt(fan_in).
template <class T>
void fill_kaiming_uniform(tensor<T>& t, double a, rng& g, std::size_t fan_in = 0) {
  if (fan_in == 0) fan_in = fan_in_of(t);
  const double gain = std::sqrt(2.0 / (1.0 + a * a));
  const double bound = gain * std::sqrt(3.0 / double(fan_in));
  fill_uniform(t, -bound, bound, g);
}

// PyTorch's kaiming_normal_: std = sqrt(2 / (1 + a^2)) / sqrt(fan_in).
template <class T>
void fill_kaiming_normal(tensor<T>& t, double a, rng& g, std::size_t fan_in = 0) {
  if (fan_in == 0) fan_in = fan_in_of(t);
  const double gain = std::sqrt(2.0 / (1.0 + a * a));
  fill_normal(t, 0.0, gain / std::sqrt(double(fan_in)), g);
}

template <class T>
tensor<T> randn(const shape_t& s, rng& g, double mean = 0, double stddev = 1) {
  tensor<T> t(s);
  fill_normal(t, mean, stddev, g);
  return t;
}
template <class T>
tensor<T> rand_uniform(const shape_t& s, rng& g, double lo = 0, double hi = 1) {
  tensor<T> t(s);
  fill_uniform(t, lo, hi, g);
  return t;
}

}  // namespace peft
