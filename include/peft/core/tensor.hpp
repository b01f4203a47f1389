#pragma once
// Storage is xtensor (row-major, N-d); math is Eigen through zero-copy Maps over the same memory.
#include <Eigen/Core>
#include <cstddef>
#include <numeric>
#include <vector>
#include <xtensor/xarray.hpp>

#include "peft/core/allocator.hpp"
#include "peft/core/error.hpp"

namespace peft {

// Storage comes from the caching allocator: activations and gradients freed at the end of a
// training step are reused by the next one instead of being unmapped and faulted in again.
template <class T>
using tensor = xt::xarray<T, xt::layout_type::row_major, caching_allocator<T>>;
using shape_t = std::vector<std::size_t>;

template <class T>
using matrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class T>
using vector = Eigen::Matrix<T, Eigen::Dynamic, 1>;
template <class T>
using matrix_map = Eigen::Map<matrix<T>>;
template <class T>
using const_matrix_map = Eigen::Map<const matrix<T>>;
template <class T>
using vector_map = Eigen::Map<vector<T>>;
// Function parameters that accept a row-major Map or matrix without copying it.
template <class T>
using matrix_cref = Eigen::Ref<const matrix<T>>;
template <class T>
using matrix_ref = Eigen::Ref<matrix<T>>;
template <class T>
using const_vector_map = Eigen::Map<const vector<T>>;

inline std::size_t numel(const shape_t& s) {
  return std::accumulate(s.begin(), s.end(), std::size_t{1}, std::multiplies<>());
}

template <class T>
shape_t shape_of(const tensor<T>& t) {
  return shape_t(t.shape().begin(), t.shape().end());
}

template <class T>
tensor<T> zeros(const shape_t& s) {
  tensor<T> t(s);
  t.fill(T(0));
  return t;
}
template <class T>
tensor<T> full(const shape_t& s, T v) {
  tensor<T> t(s);
  t.fill(v);
  return t;
}
template <class T>
tensor<T> ones(const shape_t& s) {
  return full<T>(s, T(1));
}
// Builds a tensor from a flat list of values; throws if the count does not match the shape.
template <class T>
tensor<T> make_tensor(const shape_t& s, const std::vector<T>& values) {
  if (values.size() != numel(s))
    throw shape_error("make_tensor: " + std::to_string(values.size()) + " values for shape " +
                      shape_str(s));
  tensor<T> t(s);
  std::copy(values.begin(), values.end(), t.begin());
  return t;
}

// 2-D views. A tensor of shape [d0, ..., dk] is seen as [d0*...*d(k-1), dk]; a 0-d or 1-d
// tensor as one row. No copies: the Map aliases the xtensor buffer.
template <class T>
matrix_map<T> as_matrix(tensor<T>& t) {
  const std::size_t cols = t.dimension() == 0 ? 1 : t.shape().back();
  const std::size_t rows = cols == 0 ? 0 : t.size() / cols;
  return matrix_map<T>(t.data(), Eigen::Index(rows), Eigen::Index(cols));
}
template <class T>
const_matrix_map<T> as_matrix(const tensor<T>& t) {
  const std::size_t cols = t.dimension() == 0 ? 1 : t.shape().back();
  const std::size_t rows = cols == 0 ? 0 : t.size() / cols;
  return const_matrix_map<T>(t.data(), Eigen::Index(rows), Eigen::Index(cols));
}
// Explicit 2-D view with a size check (e.g. a [b, m, k] tensor as [b*m, k]).
template <class T>
matrix_map<T> as_matrix(tensor<T>& t, std::size_t rows, std::size_t cols) {
  if (rows * cols != t.size())
    throw shape_error("as_matrix: tensor " + shape_str(t.shape()) + " viewed as [" +
                      std::to_string(rows) + "," + std::to_string(cols) + "]");
  return matrix_map<T>(t.data(), Eigen::Index(rows), Eigen::Index(cols));
}
template <class T>
const_matrix_map<T> as_matrix(const tensor<T>& t, std::size_t rows, std::size_t cols) {
  if (rows * cols != t.size())
    throw shape_error("as_matrix: tensor " + shape_str(t.shape()) + " viewed as [" +
                      std::to_string(rows) + "," + std::to_string(cols) + "]");
  return const_matrix_map<T>(t.data(), Eigen::Index(rows), Eigen::Index(cols));
}
// Flat view of all elements.
template <class T>
vector_map<T> as_vector(tensor<T>& t) {
  return vector_map<T>(t.data(), Eigen::Index(t.size()));
}
template <class T>
const_vector_map<T> as_vector(const tensor<T>& t) {
  return const_vector_map<T>(t.data(), Eigen::Index(t.size()));
}

// Copies an Eigen matrix expression into a new tensor of shape [rows, cols].
template <class Derived>
auto to_tensor(const Eigen::MatrixBase<Derived>& m) {
  using T = typename Derived::Scalar;
  tensor<T> t(shape_t{std::size_t(m.rows()), std::size_t(m.cols())});
  as_matrix(t) = m;
  return t;
}

}  // namespace peft
