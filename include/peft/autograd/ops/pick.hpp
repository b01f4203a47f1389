#pragma once
// pick: y[i] = a[i, targets[i]] for a [N, C]; rows whose target is ignore_index give 0 and no
// gradient. With log_softmax this is cross-entropy: loss = -mean(pick(log_softmax(logits), t)).
#include <cstdint>
#include <string>
#include <vector>

#include "peft/autograd/variable.hpp"

namespace peft {

template <class T>
variable<T> pick(const variable<T>& a, const std::vector<std::int64_t>& targets,
                 std::int64_t ignore_index = -100) {
  const shape_t sa = a.shape();
  if (sa.size() != 2 || sa[0] != targets.size())
    throw shape_error("pick: " + shape_str(sa) + " with " + std::to_string(targets.size()) +
                      " targets (expects [N, C] with N targets)");
  const std::size_t N = sa[0], C = sa[1];
  for (std::size_t i = 0; i < N; ++i) {
    const auto t = targets[i];
    if (t != ignore_index && (t < 0 || std::uint64_t(t) >= C))
      throw value_error("pick: target " + std::to_string(t) + " at row " + std::to_string(i) +
                        " out of range [0, " + std::to_string(C) + ") for " + shape_str(sa));
  }
  tensor<T> y = tensor<T>::from_shape({N});
  const T* ap = a.value().data();
  for (std::size_t i = 0; i < N; ++i)
    y.data()[i] = targets[i] == ignore_index ? T(0) : ap[i * C + std::size_t(targets[i])];
  return make_result<T>(std::move(y), {a}, "pick", [targets, ignore_index, C](node<T>& self) {
    auto& p = *self.parents[0];
    if (!p.requires_grad) return;
    T* dp = detail::grad_buffer(p).data();
    const T* gp = self.grad.data();
    for (std::size_t i = 0; i < targets.size(); ++i)
      if (targets[i] != ignore_index) dp[i * C + std::size_t(targets[i])] += gp[i];
  });
}

}  // namespace peft
