#pragma once
// slice: a[..., start:stop, ...] along one axis (half-open, step 1; negative axis counts from the
// end). Seen as 2-D [outer, d * inner], the result is a block of columns, so forward and backward
// are Eigen block copies.
#include <string>

#include "peft/autograd/variable.hpp"

namespace peft {

template <class T>
variable<T> slice(const variable<T>& a, int axis, std::size_t start, std::size_t stop) {
  const shape_t sa = a.shape();
  const int nd = int(sa.size());
  const int ax = axis < 0 ? axis + nd : axis;
  if (ax < 0 || ax >= nd)
    throw shape_error("slice: axis " + std::to_string(axis) + " out of range for " +
                      shape_str(sa));
  const std::size_t d = sa[std::size_t(ax)];
  if (start > stop || stop > d)
    throw shape_error("slice: [" + std::to_string(start) + ", " + std::to_string(stop) +
                      ") out of range for axis " + std::to_string(axis) + " of " + shape_str(sa));
  const std::size_t outer = numel(shape_t(sa.begin(), sa.begin() + ax));
  const std::size_t inner = numel(shape_t(sa.begin() + ax + 1, sa.end()));
  const auto R = Eigen::Index(outer), W = Eigen::Index(d * inner);
  const auto off = Eigen::Index(start * inner), c = Eigen::Index((stop - start) * inner);

  shape_t sy = sa;
  sy[std::size_t(ax)] = stop - start;
  tensor<T> y = tensor<T>::from_shape(sy);
  matrix_map<T>(y.data(), R, c) = const_matrix_map<T>(a.value().data(), R, W).middleCols(off, c);
  return make_result<T>(std::move(y), {a}, "slice", [R, W, off, c](node<T>& self) {
    auto& p = *self.parents[0];
    if (!p.requires_grad) return;
    matrix_map<T>(detail::grad_buffer(p).data(), R, W).middleCols(off, c) +=
        const_matrix_map<T>(self.grad.data(), R, c);
  });
}

}  // namespace peft
