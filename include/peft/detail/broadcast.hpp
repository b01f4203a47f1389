#pragma once
// NumPy broadcasting rules for elementwise ops, and the reduction that undoes a broadcast in
// the backward pass.
#include <vector>

#include "peft/core/error.hpp"
#include "peft/core/tensor.hpp"

namespace peft::detail {

// Result shape of broadcasting a with b; throws naming `op` and both shapes when incompatible.
inline shape_t broadcast_shape(const shape_t& a, const shape_t& b, const char* op) {
  const std::size_t n = std::max(a.size(), b.size());
  shape_t out(n);
  for (std::size_t i = 0; i < n; ++i) {
    const std::size_t da = i < n - a.size() ? 1 : a[i - (n - a.size())];
    const std::size_t db = i < n - b.size() ? 1 : b[i - (n - b.size())];
    if (da != db && da != 1 && db != 1)
      throw shape_error(std::string(op) + ": cannot broadcast " + shape_str(a) + " with " +
                        shape_str(b));
    out[i] = da == 1 ? db : da;
  }
  return out;
}

// Strides (in elements) for reading an operand of shape `s` while walking a broadcast result of
// shape `out` in row-major order: broadcast dimensions get stride 0.
inline std::vector<std::size_t> broadcast_strides(const shape_t& s, const shape_t& out) {
  std::vector<std::size_t> st(out.size(), 0);
  std::size_t acc = 1;
  for (std::size_t k = 0; k < s.size(); ++k) {
    const std::size_t i = s.size() - 1 - k, j = out.size() - 1 - k;
    st[j] = s[i] == 1 ? 0 : acc;
    acc *= s[i];
  }
  return st;
}

// Calls f(out_flat, in_flat) for every element of the broadcast result `out` (row-major), with
// the flat index of the operand of shape `s` that it reads.
template <class F>
void for_each_broadcast(const shape_t& s, const shape_t& out, F&& f) {
  const auto st = broadcast_strides(s, out);
  const std::size_t nd = out.size(), total = numel(out);
  std::vector<std::size_t> idx(nd, 0);
  std::size_t src = 0;
  for (std::size_t o = 0; o < total; ++o) {
    f(o, src);
    for (std::size_t d = nd; d-- > 0;) {  // odometer increment
      if (++idx[d] < out[d]) {
        src += st[d];
        break;
      }
      src -= st[d] * (out[d] - 1);
      idx[d] = 0;
    }
  }
}

// Sums g (shape of a broadcast result) down to `target`, the shape of one operand.
template <class T>
tensor<T> reduce_to_shape(const tensor<T>& g, const shape_t& target) {
  const shape_t gs = shape_of(g);
  if (gs == target) return g;
  tensor<T> r = tensor<T>::from_shape(target);
  r.fill(T(0));
  const T* gp = g.data();
  T* rp = r.data();
  for_each_broadcast(target, gs, [&](std::size_t o, std::size_t i) { rp[i] += gp[o]; });
  return r;
}

}  // namespace peft::detail
