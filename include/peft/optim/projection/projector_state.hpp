#pragma once
// Checkpointing of projector state, a companion of projector.hpp. projected<> saves each
// projector's state next to the optimizer moments, so a run resumed from a checkpoint takes the
// same steps bit for bit. A checkpointable projector adds two members to the Projector concept:
//
//   void save_state(projector_state<T>& out) const;  // adds its named tensors to out
//   void load_state(const projector_state<T>& in);   // validates all of in, then restores
//
// and may offer, for memory reports that must not run an SVD on a 4096 x 4096 matrix,
//
//   std::size_t planned_state_bytes(std::size_t rows, std::size_t cols) const;
//     // what state_bytes() reports once refreshed on a [rows, cols] gradient
//
// Integers (seeds, rng words, step counters) travel inside tensor<T> as 16-bit chunks, which
// float and double both represent exactly.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "peft/core/error.hpp"
#include "peft/core/tensor.hpp"
#include "peft/optim/projection/projector.hpp"

namespace peft::optim {

template <class T>
using projector_state = std::map<std::string, tensor<T>>;

template <class P, class T>
concept checkpointable_projector =
    projector<P, T> && requires(const P cp, P p, projector_state<T>& out, const projector_state<T>& in) {
      cp.save_state(out);
      p.load_state(in);
    };

// Projectors that can say their refreshed state size without being refreshed.
template <class P>
concept plans_state_bytes = requires(const P cp, std::size_t n) {
  { cp.planned_state_bytes(n, n) } -> std::convertible_to<std::size_t>;
};

}  // namespace peft::optim

namespace peft::detail {

// n 64-bit words as a [4n] tensor of 16-bit chunks (least significant first).
template <class T>
tensor<T> pack_u64(const std::vector<std::uint64_t>& words) {
  tensor<T> t = tensor<T>::from_shape({4 * words.size()});
  for (std::size_t i = 0; i < words.size(); ++i)
    for (std::size_t c = 0; c < 4; ++c) t(4 * i + c) = T(double((words[i] >> (16 * c)) & 0xFFFFu));
  return t;
}

// Inverse of pack_u64; `who` names the caller and entry in errors.
template <class T>
std::vector<std::uint64_t> unpack_u64(const tensor<T>& t, std::size_t words, const std::string& who) {
  if (t.dimension() != 1 || t.size() != 4 * words)
    throw shape_error(who + ": expected [" + std::to_string(4 * words) + "] packed words, got " +
                      shape_str(t.shape()));
  std::vector<std::uint64_t> out(words, 0);
  for (std::size_t i = 0; i < words; ++i)
    for (std::size_t c = 0; c < 4; ++c) {
      const double v = double(t(4 * i + c));
      if (!(v >= 0 && v <= 65535 && std::floor(v) == v))
        throw value_error(who + ": packed word chunk " + std::to_string(4 * i + c) + " is " +
                          std::to_string(v) + " (must be an integer in [0, 65535])");
      out[i] |= std::uint64_t(v) << (16 * c);
    }
  return out;
}

// The entry `name` of a projector state, with a message naming `who` when it is missing.
template <class T>
const tensor<T>& state_entry(const optim::projector_state<T>& s, const std::string& name,
                             const std::string& who) {
  auto it = s.find(name);
  if (it == s.end()) throw value_error(who + ": load_state: missing tensor '" + name + "'");
  return it->second;
}

// Rejects names a projector does not know (a checkpoint of another projector type).
template <class T>
void check_state_names(const optim::projector_state<T>& s, const std::vector<std::string>& known,
                       const std::string& who) {
  for (const auto& [n, t] : s) {
    bool ok = false;
    for (const auto& k : known) ok = ok || k == n;
    if (!ok) throw value_error(who + ": load_state: unexpected tensor '" + n + "'");
  }
}

}  // namespace peft::detail
