#pragma once
// permute: y = a with its dims reordered, y.shape[i] = a.shape[perm[i]] (as torch.permute).
// Generic strided copy, run by run along the last output dim (contiguous runs when the last dim
// stays last, e.g. the attention [b,s,h,d] -> [b,h,s,d]); a swap of the last two dims takes the
// Eigen transpose path. Backward scatters the gradient back through the same walk.
#include <algorithm>
#include <vector>

#include "peft/autograd/ops/transpose.hpp"
#include "peft/autograd/variable.hpp"

namespace peft {

namespace detail {

// Calls f(out_offset, in_offset, count, in_stride) for each run of `count` consecutive output
// elements (row-major) whose sources in the input start at in_offset with stride in_stride.
template <class F>
void permute_runs(const shape_t& in, const std::vector<std::size_t>& perm, F&& f) {
  const std::size_t nd = in.size();
  if (numel(in) == 0) return;
  if (nd == 0) {
    f(std::size_t{0}, std::size_t{0}, std::size_t{1}, std::size_t{1});
    return;
  }
  std::vector<std::size_t> in_strides(nd, 1);
  for (std::size_t d = nd - 1; d-- > 0;) in_strides[d] = in_strides[d + 1] * in[d + 1];
  shape_t out(nd);
  std::vector<std::size_t> st(nd);
  for (std::size_t d = 0; d < nd; ++d) {
    out[d] = in[perm[d]];
    st[d] = in_strides[perm[d]];
  }
  const std::size_t inner = out[nd - 1], inner_stride = st[nd - 1];
  const std::size_t runs = numel(in) / inner;
  std::vector<std::size_t> idx(nd - 1, 0);
  std::size_t src = 0;
  for (std::size_t r = 0; r < runs; ++r) {
    f(r * inner, src, inner, inner_stride);
    for (std::size_t d = nd - 1; d-- > 0;) {  // odometer over the outer output dims
      if (++idx[d] < out[d]) {
        src += st[d];
        break;
      }
      src -= st[d] * (out[d] - 1);
      idx[d] = 0;
    }
  }
}

}  // namespace detail

template <class T>
variable<T> permute(const variable<T>& a, std::vector<std::size_t> perm) {
  const shape_t sa = a.shape();
  const std::size_t nd = sa.size();
  {
    bool ok = perm.size() == nd;
    std::vector<bool> seen(nd, false);
    for (std::size_t i = 0; ok && i < perm.size(); ++i) {
      ok = perm[i] < nd && !seen[perm[i]];
      if (ok) seen[perm[i]] = true;
    }
    if (!ok)
      throw shape_error("permute: " + shape_str(sa) + " by perm " + shape_str(perm) +
                        " (not a permutation of the " + std::to_string(nd) + " dims)");
  }
  shape_t sy(nd);
  for (std::size_t d = 0; d < nd; ++d) sy[d] = sa[perm[d]];

  bool identity = true, last_two_swap = nd >= 2;
  for (std::size_t d = 0; d < nd; ++d) {
    identity = identity && perm[d] == d;
    if (d + 2 < nd) last_two_swap = last_two_swap && perm[d] == d;
  }
  last_two_swap = last_two_swap && perm[nd - 2] == nd - 1 && perm[nd - 1] == nd - 2;
  if (last_two_swap && !identity) return transpose(a);

  tensor<T> y = tensor<T>::from_shape(sy);
  if (identity) {
    as_vector(y) = as_vector(a.value());
  } else {
    const T* ap = a.value().data();
    T* yp = y.data();
    detail::permute_runs(sa, perm, [&](std::size_t o, std::size_t i, std::size_t c,
                                       std::size_t s) {
      if (s == 1)
        std::copy(ap + i, ap + i + c, yp + o);
      else
        for (std::size_t j = 0; j < c; ++j) yp[o + j] = ap[i + j * s];
    });
  }
  return make_result<T>(std::move(y), {a}, "permute", [sa, perm](node<T>& self) {
    auto& p = *self.parents[0];
    if (!p.requires_grad) return;
    const T* gp = self.grad.data();
    T* dp = detail::grad_buffer(p).data();
    detail::permute_runs(sa, perm, [&](std::size_t o, std::size_t i, std::size_t c,
                                       std::size_t s) {
      for (std::size_t j = 0; j < c; ++j) dp[i + j * s] += gp[o + j];
    });
  });
}

}  // namespace peft
