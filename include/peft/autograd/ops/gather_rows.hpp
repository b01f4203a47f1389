#pragma once
// gather_rows: embedding lookup. y[i, :] = table[ids[i], :] for a table [V, D], reshaped to
// index_shape + [D]. Backward scatter-adds each gradient row into the table's gradient, so a
// repeated id accumulates.
#include <cstdint>
#include <string>
#include <vector>

#include "peft/autograd/variable.hpp"

namespace peft {

template <class T>
variable<T> gather_rows(const variable<T>& table, const std::vector<std::int64_t>& ids,
                        shape_t index_shape) {
  const shape_t st = table.shape();
  if (st.size() != 2)
    throw shape_error("gather_rows: table " + shape_str(st) + " is not [V, D]");
  if (numel(index_shape) != ids.size())
    throw shape_error("gather_rows: " + std::to_string(ids.size()) + " ids for index shape " +
                      shape_str(index_shape) + " (table " + shape_str(st) + ")");
  const std::size_t V = st[0], D = st[1];
  for (auto id : ids)
    if (id < 0 || std::uint64_t(id) >= V)
      throw value_error("gather_rows: id " + std::to_string(id) + " out of range [0, " +
                        std::to_string(V) + ") for table " + shape_str(st));

  shape_t sy = std::move(index_shape);
  sy.push_back(D);
  tensor<T> y = tensor<T>::from_shape(sy);
  const auto n = Eigen::Index(ids.size()), d = Eigen::Index(D);
  {
    const auto Tab = as_matrix(table.value(), V, D);
    matrix_map<T> Y(y.data(), n, d);
    for (Eigen::Index i = 0; i < n; ++i) Y.row(i) = Tab.row(Eigen::Index(ids[std::size_t(i)]));
  }
  return make_result<T>(std::move(y), {table}, "gather_rows", [ids, V, D](node<T>& self) {
    auto& p = *self.parents[0];
    if (!p.requires_grad) return;
    auto G = as_matrix(detail::grad_buffer(p), V, D);
    const_matrix_map<T> dY(self.grad.data(), Eigen::Index(ids.size()), Eigen::Index(D));
    for (std::size_t i = 0; i < ids.size(); ++i)
      G.row(Eigen::Index(ids[i])) += dY.row(Eigen::Index(i));
  });
}

}  // namespace peft
