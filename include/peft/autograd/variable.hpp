#pragma once
// Reverse-mode autograd. A variable is a shared handle to a node; a node holds its value, its
// accumulated gradient, its parents and the closure that pushes its gradient to them. Nodes are
// only linked into a graph when gradients are enabled and some parent requires them.
#include <algorithm>
#include <functional>
#include <memory>
#include <string>
#include <unordered_set>
#include <utility>
#include <vector>

#include "peft/core/error.hpp"
#include "peft/core/tensor.hpp"

namespace peft {

namespace detail {
inline bool& grad_mode_flag() {
  thread_local bool enabled = true;
  return enabled;
}
}  // namespace detail

inline bool grad_enabled() { return detail::grad_mode_flag(); }

// RAII scope in which no graph is recorded (inference, optimizer updates, finite differences).
class no_grad_guard {
 public:
  no_grad_guard() : prev_(detail::grad_mode_flag()) { detail::grad_mode_flag() = false; }
  ~no_grad_guard() { detail::grad_mode_flag() = prev_; }
  no_grad_guard(const no_grad_guard&) = delete;
  no_grad_guard& operator=(const no_grad_guard&) = delete;

 private:
  bool prev_;
};

template <class T>
struct node {
  tensor<T> value;
  tensor<T> grad;  // meaningful only when has_grad
  bool has_grad = false;
  bool requires_grad = false;
  std::vector<std::shared_ptr<node>> parents;
  // Reads this->grad and accumulates into parents' grads (only those with requires_grad).
  std::function<void(node&)> backward_fn;
  const char* op = "leaf";

  bool is_leaf() const { return !backward_fn; }

  node() = default;
  node(const node&) = delete;
  node& operator=(const node&) = delete;
  // Releases long parent chains iteratively: the default recursive destruction would overflow
  // the stack on graphs with ~1e5 sequential nodes.
  ~node() {
    std::vector<std::shared_ptr<node>> pending = std::move(parents);
    backward_fn = nullptr;  // closures may own nodes too
    while (!pending.empty()) {
      std::shared_ptr<node> p = std::move(pending.back());
      pending.pop_back();
      if (p && p.use_count() == 1) {
        for (auto& q : p->parents) pending.push_back(std::move(q));
        p->parents.clear();
      }
    }
  }
};

namespace detail {

// Adds g into n.grad (moving it in when n has no gradient yet). No-op when n needs no grad.
template <class T>
void accumulate(node<T>& n, tensor<T>&& g) {
  if (!n.requires_grad) return;
  if (g.shape() != n.value.shape())
    throw shape_error(std::string("backward of ") + n.op + ": gradient " + shape_str(g.shape()) +
                      " for value " + shape_str(n.value.shape()));
  if (!n.has_grad) {
    n.grad = std::move(g);
    n.has_grad = true;
  } else {
    as_vector(n.grad) += as_vector(g);
  }
}

// The gradient buffer of n, zero-initialised on first use, for in-place accumulation (e.g.
// dW += dYᵀ·X: detail::gemm<T>(trans::t, trans::n, T(1), dY, X, T(1), as_matrix(grad_buffer(p)))).
template <class T>
tensor<T>& grad_buffer(node<T>& n) {
  if (!n.has_grad) {
    n.grad = tensor<T>::from_shape(n.value.shape());
    n.grad.fill(T(0));
    n.has_grad = true;
  }
  return n.grad;
}

}  // namespace detail

template <class T>
class variable {
 public:
  using value_type = T;

  variable() = default;
  explicit variable(tensor<T> value, bool requires_grad = false)
      : n_(std::make_shared<node<T>>()) {
    n_->value = std::move(value);
    n_->requires_grad = requires_grad;
  }
  explicit variable(std::shared_ptr<node<T>> n) : n_(std::move(n)) {}

  bool defined() const { return n_ != nullptr; }
  node<T>* get() const { return n_.get(); }
  const std::shared_ptr<node<T>>& ptr() const { return n_; }

  const tensor<T>& value() const { return checked()->value; }
  // Mutable access, for optimizers and initialisers (not recorded on the tape).
  tensor<T>& value() { return checked()->value; }

  bool has_grad() const { return checked()->has_grad; }
  // The accumulated gradient; throws if none has been computed.
  const tensor<T>& grad() const {
    if (!checked()->has_grad) throw error("variable::grad: no gradient (call backward first)");
    return n_->grad;
  }
  tensor<T>& grad() {
    if (!checked()->has_grad) throw error("variable::grad: no gradient (call backward first)");
    return n_->grad;
  }
  void zero_grad() {
    checked()->has_grad = false;
    n_->grad = tensor<T>();
  }

  bool requires_grad() const { return checked()->requires_grad; }
  // Only meaningful on leaves (parameters, inputs).
  void set_requires_grad(bool r) {
    if (!checked()->is_leaf())
      throw error("variable::set_requires_grad: not a leaf (use detach())");
    n_->requires_grad = r;
  }
  bool is_leaf() const { return checked()->is_leaf(); }
  const char* op() const { return checked()->op; }

  shape_t shape() const { return shape_of(checked()->value); }
  std::size_t ndim() const { return checked()->value.dimension(); }
  std::size_t numel() const { return checked()->value.size(); }
  // Size of dimension i; negative i counts from the end.
  std::size_t dim(int i) const {
    const int nd = int(ndim());
    const int j = i < 0 ? i + nd : i;
    if (j < 0 || j >= nd)
      throw shape_error("variable::dim(" + std::to_string(i) + ") of " + shape_str(shape()));
    return n_->value.shape()[std::size_t(j)];
  }
  // The single element of a one-element variable (e.g. a loss).
  T item() const {
    if (numel() != 1) throw shape_error("variable::item: variable has shape " + shape_str(shape()));
    return *n_->value.data();
  }

  // A new leaf holding a copy of the value, cut off from the graph.
  variable detach() const { return variable(checked()->value, false); }

  // Backpropagates from this variable. Without a seed the variable must have one element and
  // the seed is 1. Leaf gradients accumulate across calls (call zero_grad between steps);
  // intermediate gradients and closures are released unless retain_graph is set.
  void backward(bool retain_graph = false) {
    if (numel() != 1)
      throw shape_error("backward: implicit seed needs a one-element output, got " +
                        shape_str(shape()));
    backward(ones<T>(shape()), retain_graph);
  }
  void backward(const tensor<T>& seed, bool retain_graph = false) {
    checked();
    if (seed.shape() != n_->value.shape())
      throw shape_error("backward: seed " + shape_str(seed.shape()) + " for output " +
                        shape_str(n_->value.shape()));
    if (!n_->requires_grad) throw error("backward: output does not require grad");
    // Owning pointers: releasing a node's parents below must not free nodes still to be visited.
    auto order = topo_order(n_);
    detail::accumulate(*n_, tensor<T>(seed));
    for (auto it = order.rbegin(); it != order.rend(); ++it) {
      node<T>* x = it->get();
      if (x->is_leaf() || !x->has_grad) continue;
      x->backward_fn(*x);
      if (!retain_graph) {
        x->grad = tensor<T>();
        x->has_grad = false;
        x->backward_fn = nullptr;
        x->parents.clear();
      }
    }
  }

 private:
  node<T>* checked() const {
    if (!n_) throw error("variable: use of an undefined variable");
    return n_.get();
  }
  // Post-order DFS (iterative, so deep graphs do not overflow the stack): parents first.
  static std::vector<std::shared_ptr<node<T>>> topo_order(const std::shared_ptr<node<T>>& root) {
    std::vector<std::shared_ptr<node<T>>> order;
    std::unordered_set<node<T>*> seen;
    std::vector<std::pair<std::shared_ptr<node<T>>, std::size_t>> stack{{root, 0}};
    seen.insert(root.get());
    while (!stack.empty()) {
      node<T>* x = stack.back().first.get();
      const std::size_t i = stack.back().second++;
      if (i < x->parents.size()) {
        const auto& p = x->parents[i];
        if (p && p->requires_grad && seen.insert(p.get()).second) stack.emplace_back(p, 0);
      } else {
        order.push_back(std::move(stack.back().first));
        stack.pop_back();
      }
    }
    return order;
  }

  std::shared_ptr<node<T>> n_;
};

// Creates the output of an op. Undefined parents (e.g. an absent bias) are kept as null
// entries so that closures can index parents by position.
// The graph link (parents + closure) is recorded only when grad
// mode is on and at least one parent requires grad; otherwise the result is a plain constant.
template <class T, class Fn>
variable<T> make_result(tensor<T> value, std::vector<variable<T>> parents, const char* op,
                        Fn&& backward_fn) {
  auto n = std::make_shared<node<T>>();
  n->value = std::move(value);
  n->op = op;
  bool req = false;
  if (grad_enabled())
    for (auto& p : parents) req = req || (p.defined() && p.requires_grad());
  if (req) {
    n->requires_grad = true;
    n->parents.reserve(parents.size());
    for (auto& p : parents) n->parents.push_back(p.ptr());
    n->backward_fn = std::forward<Fn>(backward_fn);
  }
  return variable<T>(std::move(n));
}

// Convenience: a constant (no grad) and a parameter (requires grad) from a tensor.
template <class T>
variable<T> constant(tensor<T> v) {
  return variable<T>(std::move(v), false);
}
template <class T>
variable<T> parameter(tensor<T> v) {
  return variable<T>(std::move(v), true);
}

}  // namespace peft
