#pragma once
// concat: joins tensors of equal rank along `axis` (negative counts from the end); all other
// dims must match. Seen as 2-D, every input is a [outer, d_i * inner] block of columns of the
// [outer, sum(d_i) * inner] output, so forward and backward are Eigen block copies.
#include <initializer_list>
#include <string>
#include <vector>

#include "peft/autograd/variable.hpp"

namespace peft {

template <class T>
variable<T> concat(const std::vector<variable<T>>& xs, int axis) {
  if (xs.empty()) throw shape_error("concat: no inputs");
  const shape_t s0 = xs[0].shape();
  const int nd = int(s0.size());
  const int ax = axis < 0 ? axis + nd : axis;
  if (ax < 0 || ax >= nd)
    throw shape_error("concat: axis " + std::to_string(axis) + " out of range for " +
                      shape_str(s0));
  const std::size_t a = std::size_t(ax);
  shape_t sy = s0;
  sy[a] = 0;
  for (const auto& x : xs) {
    const shape_t s = x.shape();
    bool ok = s.size() == s0.size();
    for (std::size_t d = 0; ok && d < s.size(); ++d) ok = d == a || s[d] == s0[d];
    if (!ok)
      throw shape_error("concat: " + shape_str(s0) + " and " + shape_str(s) + " along axis " +
                        std::to_string(axis));
    sy[a] += s[a];
  }
  const std::size_t outer = numel(shape_t(s0.begin(), s0.begin() + ax));
  const std::size_t inner = numel(shape_t(s0.begin() + ax + 1, s0.end()));
  const std::size_t width = sy[a] * inner;

  tensor<T> y = tensor<T>::from_shape(sy);
  std::vector<std::size_t> cols;  // width of each input's column block
  cols.reserve(xs.size());
  {
    matrix_map<T> Y(y.data(), Eigen::Index(outer), Eigen::Index(width));
    Eigen::Index off = 0;
    for (const auto& x : xs) {
      const std::size_t c = x.shape()[a] * inner;
      cols.push_back(c);
      Y.middleCols(off, Eigen::Index(c)) =
          const_matrix_map<T>(x.value().data(), Eigen::Index(outer), Eigen::Index(c));
      off += Eigen::Index(c);
    }
  }
  return make_result<T>(std::move(y), xs, "concat",
                        [outer, width, cols = std::move(cols)](node<T>& self) {
    const_matrix_map<T> G(self.grad.data(), Eigen::Index(outer), Eigen::Index(width));
    Eigen::Index off = 0;
    for (std::size_t i = 0; i < cols.size(); ++i) {
      auto& p = *self.parents[i];
      const auto c = Eigen::Index(cols[i]);
      if (p.requires_grad)
        matrix_map<T>(detail::grad_buffer(p).data(), Eigen::Index(outer), c) +=
            G.middleCols(off, c);
      off += c;
    }
  });
}

// concat({a, b}, axis) without spelling out T (a braced list does not deduce std::vector<T>).
template <class T>
variable<T> concat(std::initializer_list<variable<T>> xs, int axis) {
  return concat(std::vector<variable<T>>(xs), axis);
}

}  // namespace peft
