#pragma once
// Losses, as compositions of primitives (their gradients follow from the ops' backward passes).
//   cross_entropy(logits [..., C], targets) = mean over non-ignored i of −log_softmax(logits)[i, t_i]
//   mse_loss(pred, target)                  = mean((pred − target)²)
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "peft/autograd/ops/log_softmax.hpp"
#include "peft/autograd/ops/mul.hpp"
#include "peft/autograd/ops/mean.hpp"
#include "peft/autograd/ops/pick.hpp"
#include "peft/autograd/ops/reshape.hpp"
#include "peft/autograd/ops/sub.hpp"
#include "peft/autograd/ops/sum.hpp"
#include "peft/autograd/variable.hpp"

namespace peft::nn {

// logits [N, C] or [..., C] (leading dims flattened, row-major), one target per row.
// Targets equal to ignore_index contribute nothing and are not counted (torch semantics);
// when every target is ignored the loss is 0 (torch gives nan). Returns a 0-d scalar.
template <class T>
variable<T> cross_entropy(const variable<T>& logits, const std::vector<std::int64_t>& targets,
                          std::int64_t ignore_index = -100) {
  const shape_t s = logits.shape();
  if (s.empty() || s.back() == 0)
    throw shape_error("cross_entropy: logits " + shape_str(s) + " (expects [..., C], C > 0)");
  const std::size_t C = s.back(), N = logits.numel() / C;
  if (targets.size() != N)
    throw shape_error("cross_entropy: logits " + shape_str(s) + " (" + std::to_string(N) +
                      " rows) with " + std::to_string(targets.size()) + " targets");
  std::size_t count = 0;
  for (auto t : targets) count += t != ignore_index;
  auto x = s.size() == 2 ? logits
                         : reshape(logits, {std::ptrdiff_t(N), std::ptrdiff_t(C)});
  auto picked = pick(log_softmax(x, -1), targets, ignore_index);  // [N], 0 where ignored
  return mul(sum(picked), T(count == 0 ? 0.0 : -1.0 / double(count)));
}

// Mean squared error over all elements; shapes must match exactly.
template <class T>
variable<T> mse_loss(const variable<T>& pred, const variable<T>& target) {
  if (pred.shape() != target.shape())
    throw shape_error("mse_loss: pred " + shape_str(pred.shape()) + " vs target " +
                      shape_str(target.shape()));
  auto d = sub(pred, target);
  return mean(mul(d, d));
}

}  // namespace peft::nn
