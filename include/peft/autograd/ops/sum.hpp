#pragma once
// sum: y = Σ a over the given axes (all axes -> a 0-d tensor).  dy/da = 1: the gradient of each
// output is broadcast back over the elements it summed.
// Axes may be negative (count from the end); an empty axis list reduces nothing (as in NumPy).
#include <string>
#include <vector>

#include "peft/autograd/variable.hpp"
#include "peft/detail/broadcast.hpp"

namespace peft {

namespace detail {

// Geometry of a reduction (shared by sum and mean). When the reduced axes form one contiguous
// block (ignoring size-1 dims), the input is viewed as [outer, red, inner] and the reduction is
// a row sum (inner == 1) or a column sum of each [red, inner] slab, in Eigen; other axis sets
// fall back to a strided walk.
struct reduce_plan {
  shape_t in;      // input shape
  shape_t kept;    // output shape with keepdims (reduced axes set to 1)
  shape_t out;     // output shape as returned
  std::size_t count = 1;  // elements summed into each output
  bool contiguous = true;
  std::size_t outer = 1, red = 1, inner = 1;
};

inline reduce_plan make_reduce_plan(const shape_t& s, const std::vector<int>& axes, bool keepdims,
                                    const char* op) {
  const int nd = int(s.size());
  std::vector<bool> reduced(s.size(), false);
  for (int ax : axes) {
    const int j = ax < 0 ? ax + nd : ax;
    if (j < 0 || j >= nd)
      throw shape_error(std::string(op) + ": axis " + std::to_string(ax) + " out of range for " +
                        shape_str(s));
    if (reduced[std::size_t(j)])
      throw value_error(std::string(op) + ": duplicate axis in " + shape_str(axes) + " for " +
                        shape_str(s));
    reduced[std::size_t(j)] = true;
  }
  reduce_plan p;
  p.in = s;
  p.kept = s;
  int state = 0;  // 0: before the reduced block, 1: inside it, 2: after it
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (reduced[i]) {
      p.kept[i] = 1;
      p.count *= s[i];
    } else {
      p.out.push_back(s[i]);
    }
    if (s[i] == 1) continue;  // size-1 dims do not affect the memory layout
    if (reduced[i]) {
      if (state == 2) p.contiguous = false;
      state = 1;
      p.red *= s[i];
    } else {
      if (state == 1) state = 2;
      (state == 0 ? p.outer : p.inner) *= s[i];
    }
  }
  if (keepdims) p.out = p.kept;
  return p;
}

// Sums x according to p; the result has shape p.out.
template <class T>
tensor<T> reduce_sum(const tensor<T>& x, const reduce_plan& p) {
  tensor<T> y = tensor<T>::from_shape(p.out);
  if (!p.contiguous) {
    y.fill(T(0));
    T* yp = y.data();
    const T* xp = x.data();
    for_each_broadcast(p.kept, p.in, [&](std::size_t o, std::size_t i) { yp[i] += xp[o]; });
  } else if (p.inner == 1) {
    as_vector(y) = as_matrix(x, p.outer, p.red).rowwise().sum();
  } else {
    auto Y = as_matrix(y, p.outer, p.inner);
    for (std::size_t o = 0; o < p.outer; ++o)
      Y.row(Eigen::Index(o)) =
          const_matrix_map<T>(x.data() + o * p.red * p.inner, Eigen::Index(p.red),
                              Eigen::Index(p.inner))
              .colwise()
              .sum();
  }
  return y;
}

// The gradient of a reduction: g (p.out's elements) times `scale`, broadcast to shape p.in.
template <class T>
tensor<T> expand_reduced(const tensor<T>& g, const reduce_plan& p, T scale) {
  tensor<T> dx = tensor<T>::from_shape(p.in);
  if (!p.contiguous) {
    T* dp = dx.data();
    const T* gp = g.data();
    for_each_broadcast(p.kept, p.in, [&](std::size_t o, std::size_t i) { dp[o] = gp[i] * scale; });
  } else if (p.inner == 1) {
    as_matrix(dx, p.outer, p.red).colwise() = as_vector(g) * scale;
  } else {
    const auto G = as_matrix(g, p.outer, p.inner);
    for (std::size_t o = 0; o < p.outer; ++o)
      matrix_map<T>(dx.data() + o * p.red * p.inner, Eigen::Index(p.red), Eigen::Index(p.inner))
          .rowwise() = G.row(Eigen::Index(o)) * scale;
  }
  return dx;
}

inline std::vector<int> all_axes(std::size_t ndim) {
  std::vector<int> axes(ndim);
  for (std::size_t i = 0; i < ndim; ++i) axes[i] = int(i);
  return axes;
}

}  // namespace detail

template <class T>
variable<T> sum(const variable<T>& a, const std::vector<int>& axes, bool keepdims = false) {
  if (!a.defined()) throw value_error("sum: undefined input");
  const auto plan = detail::make_reduce_plan(a.shape(), axes, keepdims, "sum");
  return make_result<T>(detail::reduce_sum(a.value(), plan), {a}, "sum", [plan](node<T>& self) {
    detail::accumulate(*self.parents[0], detail::expand_reduced(self.grad, plan, T(1)));
  });
}

// Sum of all elements, as a 0-d tensor (shape {}).
template <class T>
variable<T> sum(const variable<T>& a) {
  if (!a.defined()) throw value_error("sum: undefined input");
  return sum(a, detail::all_axes(a.ndim()), false);
}

}  // namespace peft
