#pragma once
// softmax along one axis: y = e^(a - max) / Σ e^(a - max) (subtracting the max keeps every
// exponent <= 0: no overflow for large inputs).  Backward: dx = y·(g - Σ g·y) along the axis.
#include <string>
#include <type_traits>

#include "peft/autograd/variable.hpp"

namespace peft {

namespace detail {

// A tensor seen as [outer, n, inner] around one axis: the op works on the outer·inner lines of
// n elements each (contiguous when inner == 1, i.e. the axis is last in memory).
struct axis_view {
  std::size_t outer = 1, n = 1, inner = 1;
};

inline axis_view make_axis_view(const shape_t& s, int axis, const char* op) {
  const int nd = int(s.size());
  const int j = axis < 0 ? axis + nd : axis;
  if (j < 0 || j >= nd)
    throw shape_error(std::string(op) + ": axis " + std::to_string(axis) + " out of range for " +
                      shape_str(s));
  axis_view v;
  for (int i = 0; i < nd; ++i) (i < j ? v.outer : i == j ? v.n : v.inner) *= s[std::size_t(i)];
  return v;
}

// Array views of an op buffer (const if P is): one contiguous line of n elements, or an
// [n, inner] row-major slab whose columns are lines.
template <class P>
auto axis_row(P* p, std::size_t n) {
  using A = Eigen::Array<std::remove_const_t<P>, 1, Eigen::Dynamic>;
  return Eigen::Map<std::conditional_t<std::is_const_v<P>, const A, A>>(p, Eigen::Index(n));
}
template <class P>
auto axis_slab(P* p, std::size_t n, std::size_t inner) {
  using A = Eigen::Array<std::remove_const_t<P>, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  return Eigen::Map<std::conditional_t<std::is_const_v<P>, const A, A>>(p, Eigen::Index(n),
                                                                        Eigen::Index(inner));
}

// Column-wise max / sum of a slab (one value per line), accumulated row by row in memory order:
// Eigen's colwise() reductions walk each column with the row stride and miss the cache.
template <class D>
Eigen::Array<typename D::Scalar, 1, Eigen::Dynamic> col_max(const Eigen::ArrayBase<D>& x) {
  Eigen::Array<typename D::Scalar, 1, Eigen::Dynamic> m = x.row(0);
  for (Eigen::Index r = 1; r < x.rows(); ++r) m = m.max(x.row(r));
  return m;
}
template <class D>
Eigen::Array<typename D::Scalar, 1, Eigen::Dynamic> col_sum(const Eigen::ArrayBase<D>& x) {
  Eigen::Array<typename D::Scalar, 1, Eigen::Dynamic> s = x.row(0);
  for (Eigen::Index r = 1; r < x.rows(); ++r) s += x.row(r);
  return s;
}

// Runs an op along the axis of v over buffers ps of the viewed shape (const buffers are inputs,
// the others outputs the op writes). Last axis: line(row(ps)...) for each contiguous row.
// Other axes: slab(slab(ps)...) for each [n, inner] slab, the op reducing over the slab's rows
// (col_max / col_sum) and broadcasting with rowwise(), so memory is walked in order.
template <class Line, class Slab, class... P>
void for_each_axis_slice(const axis_view& v, Line&& line, Slab&& slab, P*... ps) {
  if (v.n == 0) return;
  if (v.inner == 1) {
    for (std::size_t o = 0; o < v.outer; ++o) line(axis_row(ps + o * v.n, v.n)...);
  } else {
    for (std::size_t o = 0; o < v.outer; ++o)
      slab(axis_slab(ps + o * v.n * v.inner, v.n, v.inner)...);
  }
}

}  // namespace detail

template <class T>
variable<T> softmax(const variable<T>& a, int axis = -1) {
  if (!a.defined()) throw value_error("softmax: undefined input");
  const auto v = detail::make_axis_view(a.shape(), axis, "softmax");
  tensor<T> y = tensor<T>::from_shape(a.value().shape());
  detail::for_each_axis_slice(
      v,
      [](auto xs, auto ys) {
        ys = (xs - xs.maxCoeff()).exp();
        ys /= ys.sum();
      },
      [](auto xs, auto ys) {
        ys = (xs.rowwise() - detail::col_max(xs)).exp();
        ys.rowwise() /= detail::col_sum(ys);
      },
      a.value().data(), y.data());
  return make_result<T>(std::move(y), {a}, "softmax", [v](node<T>& self) {
    tensor<T> dx = tensor<T>::from_shape(self.grad.shape());
    detail::for_each_axis_slice(
        v, [](auto gs, auto ys, auto ds) { ds = ys * (gs - (gs * ys).sum()); },
        [](auto gs, auto ys, auto ds) { ds = ys * (gs.rowwise() - detail::col_sum(gs * ys)); },
        static_cast<const T*>(self.grad.data()), static_cast<const T*>(self.value.data()),
        dx.data());
    detail::accumulate(*self.parents[0], std::move(dx));
  });
}

}  // namespace peft
