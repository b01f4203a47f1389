#pragma once
// The engine behind projected<Base, Projector>, adafactor and adamw8bit: an optimizer built from
//   - an update Rule: the math of one base optimizer written as "given a gradient in some shape
//     and the state tensors of that shape, produce the step", so that the same rule runs on a
//     full weight or on a low-rank projection of its gradient;
//   - an optional Projector (projection/projector.hpp) per eligible 2-D parameter;
//   - a Storage policy: full precision, or 8-bit block-wise (quant8.hpp).
//
// One step of a parameter W (t = updates already taken):
//   G' = sign·G + l2·W                      (maximize / L2 decay, as the base does; not for AdamW)
//   projected: if needs_refresh(t) { refresh(G', t); transfer(moments) }
//              u = rule(project(G', t))     (moments live in the low shape)
//              W = W·(1 − decay) + project_back(u, t)   (project_back_add(u, t, W) when the
//                                                          projector has it: no temporary)
//   otherwise: u = rule(G');  W = W·(1 − decay) + u
// where `decay` is the rule's decoupled weight decay (AdamW, Adafactor) applied to the full weight.
//
// A Rule provides
//   using options_type;                      // the base's options (lr, weight_decay, validate, name)
//   static std::vector<state_spec> state_specs(const options_type&, const shape_t& shape);
//   static double grad_sign(const options_type&);   // −1 when maximizing
//   static double l2_decay(const options_type&);    // coefficient folded into the gradient
//   static double direction(const options_type&, std::size_t t /* 1-based */, vector_map<T> g,
//                           const shape_t& shape, state_tensors<T>& s, const_vector_map<T> w);
//     // overwrites g with the step to add; creates its state tensors on first use; w is the full
//     // weight (Adafactor's RMS); returns the decoupled decay fraction for this step.
//
// Checkpoints (named_state/load_state) hold, per parameter index: the step count, the rule's
// state tensors in the storage's form (full tensors, or "<name>.codes" + "<name>.absmax" for 8-bit
// ones) and the projector's state under "proj.<name>"; resuming from them is bit-exact.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <type_traits>
#include <unordered_set>
#include <utility>
#include <vector>

#include "peft/autograd/variable.hpp"
#include "peft/core/error.hpp"
#include "peft/core/random.hpp"
#include "peft/core/tensor.hpp"
#include "peft/detail/elementwise.hpp"
#include "peft/optim/adam.hpp"
#include "peft/optim/optimizer.hpp"
#include "peft/optim/projection/projector.hpp"
#include "peft/optim/projection/projector_state.hpp"
#include "peft/optim/sgd.hpp"

namespace peft::optim {

template <class T>
using state_tensors = std::map<std::string, tensor<T>>;

// One state tensor of a rule.
struct state_spec {
  std::string name;
  shape_t shape;
  bool quantizable = true;             // may be stored in 8 bits
  bool nonnegative = false;            // second moments: the unsigned 8-bit map
  std::optional<moment> transfer{};    // what Projector::transfer is told on a basis change
};

// Where a projector is being built: the parameter's flat index, its 2-D shape, and a seed derived
// from projected_options::seed and the index (so runs are reproducible and parameters differ).
struct projector_site {
  std::size_t index = 0;
  std::size_t rows = 0, cols = 0;
  std::uint64_t seed = 0;
};

struct projected_options {
  std::uint64_t seed = 0;
  // 8-bit storage only: tensors with fewer elements stay in full precision (bitsandbytes'
  // min_8bit_size).
  std::size_t min_8bit_size = 4096;
  // Which eligible parameters (2-D, both dims >= rank) are projected; null = all of them.
  std::function<bool(std::size_t index, const shape_t& shape)> select{};
};

// Marks an engine without projection (every parameter takes the full-rank rule).
struct no_projector {};

// Full-precision state: the rule's tensors as they are.
struct full_precision_storage {
  static constexpr const char* name = "32-bit";
  template <class T>
  class store {
   public:
    // Moves the state into `work` (8-bit stores dequantize into tensors taken from `pool`).
    void load(state_tensors<T>& work, state_tensors<T>& /*pool*/) {
      work = std::move(t_);
      t_.clear();
    }
    // Takes the state back from `work` (8-bit stores quantize it and return buffers to `pool`).
    void save(state_tensors<T>& work, const std::vector<state_spec>&, std::size_t,
              state_tensors<T>& /*pool*/) {
      t_ = std::move(work);
      work.clear();
    }
    std::size_t bytes() const {
      std::size_t n = 0;
      for (const auto& [k, v] : t_) n += v.size() * sizeof(T);
      return n;
    }
    void export_named(state_tensors<T>& out) const {
      for (const auto& [k, v] : t_) out[k] = v;
    }
    // Takes the tensors of `specs` from `in` (recording their names in `used`), all present and
    // of the spec's shape.
    void import_named(const state_tensors<T>& in, const std::vector<state_spec>& specs,
                      std::size_t, std::set<std::string>& used, const std::string& who) {
      t_.clear();
      for (const auto& s : specs) {
        auto it = in.find(s.name);
        if (it == in.end()) throw value_error(who + ": missing tensor '" + s.name + "'");
        if (shape_of(it->second) != s.shape)
          throw shape_error(who + ": tensor '" + s.name + "' has shape " +
                            shape_str(it->second.shape()) + ", expected " + shape_str(s.shape));
        t_[s.name] = it->second;
        used.insert(s.name);
      }
    }
    static std::size_t planned_bytes(const state_spec& s, std::size_t, std::size_t elem) {
      return numel(s.shape) * elem;
    }

   private:
    state_tensors<T> t_;
  };
};

namespace rule_detail {
inline std::uint64_t param_seed(std::uint64_t seed, std::size_t index) {
  return rng(seed).fork(index).next_u64();
}
}  // namespace rule_detail

template <class T, class Rule, class Projector = no_projector,
          class Storage = full_precision_storage>
class rule_optimizer : public optimizer<T> {
 public:
  using options_type = typename Rule::options_type;
  using rule_type = Rule;
  using projector_type = Projector;
  using storage_type = Storage;
  using group_type = optim::group<T, options_type>;
  static constexpr bool has_projector = !std::is_same_v<Projector, no_projector>;
  using factory_type = std::function<Projector(const projector_site&)>;

  // No projection: every parameter takes the full-rank rule.
  rule_optimizer(std::vector<variable<T>> params, const options_type& o,
                 const projected_options& po = {})
      : po_(po) {
    init_single(std::move(params), o);
    build({}, 0);
  }
  rule_optimizer(std::vector<param_group<T>> groups, const options_type& defaults,
                 const projected_options& po = {})
      : po_(po) {
    init_groups(std::move(groups), defaults);
    build({}, 0);
  }
  // Projection of every eligible parameter (2-D, both dims >= rank, selected) by factory(site).
  rule_optimizer(std::vector<variable<T>> params, const options_type& o, std::size_t rank,
                 factory_type factory, const projected_options& po = {})
      : po_(po) {
    init_single(std::move(params), o);
    build(std::move(factory), rank);
  }
  rule_optimizer(std::vector<param_group<T>> groups, const options_type& defaults,
                 std::size_t rank, factory_type factory, const projected_options& po = {})
      : po_(po) {
    init_groups(std::move(groups), defaults);
    build(std::move(factory), rank);
  }

  std::string name() const override {
    std::string n = options_type::name;
    if constexpr (has_projector) n = "projected " + n;
    if constexpr (!std::is_same_v<Storage, full_precision_storage>) n += " (8-bit states)";
    return n;
  }

  std::size_t num_groups() const override { return groups_.size(); }
  group_type& group(std::size_t i) { return groups_.at(check_group(i)); }
  const group_type& group(std::size_t i) const { return groups_.at(check_group(i)); }
  double lr(std::size_t g) const override { return group(g).lr; }
  using optimizer<T>::set_lr;
  void set_lr(std::size_t g, double lr) override {
    if (!(lr >= 0))
      throw value_error(name() + ": invalid lr " + peft::detail::hparam_str(lr) + " for group " +
                        std::to_string(g) + " (must be >= 0)");
    group(g).lr = lr;
  }

  std::vector<variable<T>> parameters() const override {
    std::vector<variable<T>> out;
    out.reserve(slots_.size());
    for (const auto& s : slots_) out.push_back(s.param);
    return out;
  }
  std::size_t num_parameters() const { return slots_.size(); }
  std::size_t index_of(const variable<T>& p) const {
    for (std::size_t i = 0; i < slots_.size(); ++i)
      if (slots_[i].param.get() == p.get()) return i;
    throw value_error(name() + ": index_of: parameter not in this optimizer");
  }
  // Whether parameter i has a projector (else it takes the full-rank update).
  bool is_projected(std::size_t i) const { return slot(i, "is_projected").proj.has_value(); }
  const Projector& projector(std::size_t i) const {
    const auto& s = slot(i, "projector");
    if (!s.proj) throw value_error(name() + ": projector: parameter " + std::to_string(i) +
                                   " " + shape_str(s.param.shape()) + " is not projected");
    return *s.proj;
  }
  // Mutable access for code that drives the projector's calls itself (e.g. dist's data-parallel
  // hooks, which make the optimizer's own calls one step early).
  Projector& projector(std::size_t i) {
    return const_cast<Projector&>(std::as_const(*this).projector(i));
  }
  // Updates parameter i has received.
  std::size_t step_count(std::size_t i) const { return slot(i, "step_count").step; }
  // The shape its state tensors live in (the low shape when projected).
  shape_t update_shape(std::size_t i) const { return update_shape_of(slot(i, "update_shape")); }

  void step() override {
    for (std::size_t gi = 0; gi < groups_.size(); ++gi) {
      std::string who = options_type::name;
      who += " group ";
      who += std::to_string(gi);
      groups_[gi].validate(who);
    }
    for (std::size_t i = 0; i < slots_.size(); ++i) {
      auto& s = slots_[i];
      if (!s.param.has_grad()) continue;
      if (s.param.grad().shape() != s.param.value().shape())
        throw shape_error(name() + ": parameter " + std::to_string(i) + " has value " +
                          shape_str(s.param.value().shape()) + " but gradient " +
                          shape_str(s.param.grad().shape()));
      update(groups_[s.group], s);
    }
  }

  void zero_grad() override {
    for (auto& s : slots_) s.param.zero_grad();
  }

  std::size_t state_bytes() const override {
    std::size_t n = 0;
    for (std::size_t i = 0; i < slots_.size(); ++i) n += bytes_of(slots_[i]);
    return n;
  }
  std::size_t state_bytes(std::size_t i) const override { return bytes_of(slot(i, "state_bytes")); }

  // What state_bytes(i) will be once parameter i has been updated (projector refreshed).
  std::size_t planned_state_bytes(std::size_t i) const {
    const auto& s = slot(i, "planned_state_bytes");
    std::size_t n = 0;
    for (const auto& sp : Rule::state_specs(groups_[s.group], update_shape_of(s)))
      n += Storage::template store<T>::planned_bytes(sp, po_.min_8bit_size, sizeof(T));
    if constexpr (has_projector)
      if (s.proj) n += projector_planned_bytes(*s.proj, s.rows, s.cols);
    return n;
  }

  // A snapshot built on each call (copies the state; meant for checkpoints).
  const state_map<T>& named_state() const override {
    snapshot_.clear();
    for (std::size_t i = 0; i < slots_.size(); ++i) {
      const auto& s = slots_[i];
      if (s.step == 0) continue;
      param_state<T> ps;
      ps.step = s.step;
      s.state.export_named(ps.tensors);
      if constexpr (has_projector)
        if (s.proj) {
          projector_state<T> pst;
          s.proj->save_state(pst);
          for (auto& [k, v] : pst) ps.tensors.emplace("proj." + k, std::move(v));
        }
      snapshot_.emplace(i, std::move(ps));
    }
    return snapshot_;
  }

  // Replaces the whole state; everything is validated before anything changes.
  void load_state(const state_map<T>& state) override {
    const std::string who0 = name() + ": load_state: ";
    struct staged {
      std::size_t index;
      std::size_t step;
      typename Storage::template store<T> store;
      std::optional<Projector> proj;
    };
    std::vector<staged> ready;
    for (const auto& [i, ps] : state) {
      if (i >= slots_.size())
        throw value_error(who0 + "state for parameter " + std::to_string(i) + ", optimizer has " +
                          std::to_string(slots_.size()) + " parameters");
      const std::string who = who0 + "parameter " + std::to_string(i);
      const auto& s = slots_[i];
      if (ps.step == 0) throw value_error(who + ": step count 0 with saved state");
      staged st{i, ps.step, {}, std::nullopt};
      std::set<std::string> used;
      st.store.import_named(ps.tensors, Rule::state_specs(groups_[s.group], update_shape_of(s)),
                            po_.min_8bit_size, used, who);
      if constexpr (has_projector) {
        if (s.proj) {
          projector_state<T> pst;
          for (const auto& [k, v] : ps.tensors)
            if (k.rfind("proj.", 0) == 0) {
              pst.emplace(k.substr(5), v);
              used.insert(k);
            }
          st.proj.emplace(factory_(site_of(i)));
          st.proj->load_state(pst);
        }
      }
      for (const auto& [k, v] : ps.tensors)
        if (!used.count(k)) throw value_error(who + ": unexpected tensor '" + k + "'");
      ready.push_back(std::move(st));
    }
    // Commit: parameters absent from `state` start afresh.
    for (std::size_t i = 0; i < slots_.size(); ++i) {
      auto& s = slots_[i];
      s.step = 0;
      s.state = {};
      if constexpr (has_projector)
        if (s.proj) s.proj.emplace(factory_(site_of(i)));
    }
    for (auto& st : ready) {
      auto& s = slots_[st.index];
      s.step = st.step;
      s.state = std::move(st.store);
      if constexpr (has_projector)
        if (st.proj) s.proj = std::move(st.proj);
    }
  }

  const projected_options& engine_options() const { return po_; }

  // Whether a parameter of `shape` is projected at `rank` (2-D with both dims >= rank).
  static bool eligible(const shape_t& shape, std::size_t rank) {
    return rank > 0 && shape.size() == 2 && shape[0] >= rank && shape[1] >= rank;
  }

  // Bytes a projector will hold once refreshed on a [rows, cols] gradient: its own plan when it
  // has one, else measured by refreshing a copy on a Gaussian gradient.
  template <class P>
  static std::size_t projector_planned_bytes(const P& p, std::size_t rows, std::size_t cols) {
    if constexpr (plans_state_bytes<P>) {
      return p.planned_state_bytes(rows, cols);
    } else {
      P q = p;
      rng g(0x5eed);
      matrix<T> G(static_cast<Eigen::Index>(rows), static_cast<Eigen::Index>(cols));
      for (Eigen::Index k = 0; k < G.size(); ++k) G.data()[k] = T(g.normal());
      q.refresh(G, 0);
      return q.state_bytes();
    }
  }

 private:
  struct slot_type {
    variable<T> param;
    std::size_t group = 0;
    std::size_t rows = 0, cols = 0;  // 2-D view (projected parameters)
    std::optional<Projector> proj;
    std::size_t step = 0;
    typename Storage::template store<T> state;
  };

  void init_single(std::vector<variable<T>> params, const options_type& o) {
    if (params.empty()) throw value_error(std::string(options_type::name) + ": empty parameter list");
    group_type g;
    static_cast<options_type&>(g) = o;
    g.params = std::move(params);
    add_group(std::move(g));
  }
  void init_groups(std::vector<param_group<T>> groups, const options_type& defaults) {
    if (groups.empty()) throw value_error(std::string(options_type::name) + ": no parameter groups");
    for (auto& spec : groups) {
      group_type g;
      static_cast<options_type&>(g) = defaults;
      if (spec.lr) g.lr = *spec.lr;
      if (spec.weight_decay) g.weight_decay = *spec.weight_decay;
      g.params = std::move(spec.params);
      add_group(std::move(g));
    }
  }
  void add_group(group_type g) {
    const std::string who =
        std::string(options_type::name) + " group " + std::to_string(groups_.size());
    g.validate(who);
    for (const auto& p : g.params) {
      if (!p.defined()) throw value_error(who + ": undefined parameter");
      if (!seen_.insert(p.get()).second)
        throw value_error(who + ": a parameter appears more than once");
    }
    groups_.push_back(std::move(g));
  }

  void build(factory_type factory, std::size_t rank) {
    factory_ = std::move(factory);
    for (std::size_t gi = 0; gi < groups_.size(); ++gi)
      for (const auto& p : groups_[gi].params) {
        slot_type s;
        s.param = p;
        s.group = gi;
        slots_.push_back(std::move(s));
      }
    if constexpr (has_projector) {
      if (!factory_) throw value_error(name() + ": no projector factory");
      for (std::size_t i = 0; i < slots_.size(); ++i) {
        auto& s = slots_[i];
        const shape_t shape = s.param.shape();
        if (!eligible(shape, rank) || (po_.select && !po_.select(i, shape))) continue;
        s.rows = shape[0];
        s.cols = shape[1];
        s.proj.emplace(factory_(site_of(i)));
        const auto ls = s.proj->low_shape(s.rows, s.cols);
        if (ls.first == 0 || ls.second == 0)
          throw value_error(name() + ": projector gives an empty low shape for parameter " +
                            std::to_string(i) + " " + shape_str(shape));
      }
    }
  }

  projector_site site_of(std::size_t i) const {
    const auto& s = slots_[i];
    return {i, s.rows, s.cols, rule_detail::param_seed(po_.seed, i)};
  }

  shape_t update_shape_of(const slot_type& s) const {
    if constexpr (has_projector)
      if (s.proj) {
        const auto ls = s.proj->low_shape(s.rows, s.cols);
        return {ls.first, ls.second};
      }
    return s.param.shape();
  }

  std::size_t bytes_of(const slot_type& s) const {
    std::size_t n = s.state.bytes();
    if constexpr (has_projector)
      if (s.proj) n += s.proj->state_bytes();
    return n;
  }

  const slot_type& slot(std::size_t i, const char* op) const {
    if (i >= slots_.size())
      throw value_error(name() + ": " + op + ": parameter " + std::to_string(i) + " of " +
                        std::to_string(slots_.size()));
    return slots_[i];
  }
  std::size_t check_group(std::size_t i) const {
    if (i >= groups_.size())
      throw value_error(name() + ": group " + std::to_string(i) + " of " +
                        std::to_string(groups_.size()));
    return i;
  }

  // G' = sign·G + l2·W into dst (a flat buffer of G's size), as the base computes it.
  static void transformed_grad(const options_type& o, const_vector_map<T> g, const_vector_map<T> w,
                               vector_map<T> dst) {
    const bool neg = Rule::grad_sign(o) < 0;
    const double l2 = Rule::l2_decay(o);
    if (l2 != 0) {
      const T wd = T(l2);
      if (neg)
        dst.array() = -g.array() + wd * w.array();
      else
        dst.array() = g.array() + wd * w.array();
    } else {
      if (neg)
        dst.array() = -g.array();
      else
        dst = g;
    }
  }

  void update(const group_type& g, slot_type& s) {
    const auto specs = Rule::state_specs(g, update_shape_of(s));
    work_.clear();
    s.state.load(work_, pool_);
    tensor<T>& w = s.param.value();
    const tensor<T>& grad = s.param.grad();
    const std::size_t t = s.step;  // updates already taken
    double decay = 0;
    if constexpr (has_projector) {
      if (s.proj) {
        auto& P = *s.proj;
        const Eigen::Index R = Eigen::Index(s.rows), C = Eigen::Index(s.cols);
        // The gradient as it is, or a transformed copy (maximize, L2 decay).
        matrix<T> Gt;
        const bool plain = Rule::grad_sign(g) > 0 && Rule::l2_decay(g) == 0;
        if (!plain) {
          Gt.resize(R, C);
          transformed_grad(g, as_vector(grad), as_vector(std::as_const(w)),
                           vector_map<T>(Gt.data(), Gt.size()));
        }
        const matrix_cref<T> G = plain ? matrix_cref<T>(as_matrix(grad, s.rows, s.cols))
                                       : matrix_cref<T>(Gt);
        if (P.needs_refresh(t)) {
          P.refresh(G, t);
          for (const auto& sp : specs) {
            auto it = work_.find(sp.name);
            if (!sp.transfer || it == work_.end()) continue;
            auto tm = as_matrix(it->second, sp.shape[0], numel(sp.shape) / sp.shape[0]);
            matrix<T> M = tm;
            P.transfer(M, *sp.transfer);
            if (M.rows() != tm.rows() || M.cols() != tm.cols())
              throw shape_error(name() + ": projector transfer changed '" + sp.name + "' from " +
                                shape_str(sp.shape) + " to [" + std::to_string(M.rows()) + "," +
                                std::to_string(M.cols()) + "]");
            tm = M;
          }
        }
        const shape_t ls = update_shape_of(s);
        matrix<T> low = P.project(G, t);
        if (std::size_t(low.rows()) != ls[0] || std::size_t(low.cols()) != ls[1])
          throw shape_error(name() + ": projector returned [" + std::to_string(low.rows()) + "," +
                            std::to_string(low.cols()) + "], low_shape says " + shape_str(ls));
        decay = Rule::direction(g, t + 1, vector_map<T>(low.data(), low.size()), ls, work_,
                                as_vector(std::as_const(w)));
        auto wm = as_matrix(w, s.rows, s.cols);
        if (decay != 0) peft::detail::scale_in_place(as_vector(w), T(1 - decay));
        if constexpr (requires(const matrix<T>& l, matrix_ref<T> W) {
                        P.project_back_add(l, t, W, T(1));
                      }) {
          // The back-projection accumulates straight into W (one GEMM, no W-sized temporary).
          P.project_back_add(std::as_const(low), t, matrix_ref<T>(wm), T(1));
        } else {
          matrix<T> back = P.project_back(std::as_const(low), t);
          if (back.rows() != R || back.cols() != C)
            throw shape_error(name() + ": project_back returned [" + std::to_string(back.rows()) +
                              "," + std::to_string(back.cols()) + "] for a " +
                              shape_str(w.shape()) + " parameter");
          wm += back;
        }
        s.state.save(work_, specs, po_.min_8bit_size, pool_);
        ++s.step;
        return;
      }
    }
    // Full-rank update, in the parameter's own shape.
    u_.resize(w.size());
    transformed_grad(g, as_vector(grad), as_vector(std::as_const(w)),
                     vector_map<T>(u_.data(), u_.size()));
    decay = Rule::direction(g, t + 1, vector_map<T>(u_.data(), u_.size()), s.param.shape(), work_,
                            as_vector(std::as_const(w)));
    auto wv = as_vector(w);
    if (decay != 0) peft::detail::scale_in_place(wv, T(1 - decay));
    wv += u_;
    s.state.save(work_, specs, po_.min_8bit_size, pool_);
    ++s.step;
  }

  projected_options po_;
  std::vector<group_type> groups_;
  std::unordered_set<const node<T>*> seen_;
  std::vector<slot_type> slots_;
  factory_type factory_;
  state_tensors<T> work_;  // the state of the parameter being updated (8-bit: dequantized)
  state_tensors<T> pool_;  // 8-bit storage: dequantization buffers reused across parameters
  vector<T> u_;            // scratch for full-rank updates
  mutable state_map<T> snapshot_;
};

}  // namespace peft::optim

// ---- the rules of the plain optimizers ----
namespace peft::detail {

// The tensor `name` of s, created as zeros of `shape` on first use.
template <class T>
tensor<T>& rule_state(optim::state_tensors<T>& s, const char* name, const shape_t& shape) {
  auto it = s.find(name);
  if (it == s.end()) it = s.emplace(name, zeros<T>(shape)).first;
  return it->second;
}

// Adam / AdamW exactly as adam.hpp computes them (same operations in the same order, so the
// full-rank path matches adam.hpp bit for bit); the step includes −lr/(1 − β1^t).
template <class T, class Options>
struct adam_rule {
  using options_type = Options;

  static std::vector<optim::state_spec> state_specs(const Options& o, const shape_t& s) {
    std::vector<optim::state_spec> v{{"exp_avg", s, true, false, optim::moment::first},
                                     {"exp_avg_sq", s, true, true, optim::moment::second}};
    if (o.amsgrad) v.push_back({"max_exp_avg_sq", s, true, true, optim::moment::second});
    return v;
  }
  static double grad_sign(const Options& o) { return o.maximize ? -1 : 1; }
  static double l2_decay(const Options& o) {
    return Options::decoupled_weight_decay ? 0.0 : o.weight_decay;
  }

  static double direction(const Options& o, std::size_t t, vector_map<T> g, const shape_t& shape,
                          optim::state_tensors<T>& s, const_vector_map<T> /*w*/) {
    auto m = as_vector(rule_state(s, "exp_avg", shape));
    auto v = as_vector(rule_state(s, "exp_avg_sq", shape));
    const double b1 = o.betas.first, b2 = o.betas.second;
    const double bc1 = 1 - std::pow(b1, double(t));
    const double bc2_sqrt = std::sqrt(1 - std::pow(b2, double(t)));
    const T w1 = T(1 - b1), beta2 = T(b2), w2 = T(1 - b2);
    const T bc2_sqrt_t = T(bc2_sqrt), eps = T(o.eps);
    const T neg_step = T(-(o.lr / bc1));
    if (1 - b1 < 0.5)
      m.array() += w1 * (g.array() - m.array());
    else
      m.array() = g.array() - (g.array() - m.array()) * (T(1) - w1);
    v.array() = v.array() * beta2 + w2 * g.array() * g.array();
    if (o.amsgrad) {
      auto vmax = as_vector(rule_state(s, "max_exp_avg_sq", shape));
      vmax = vmax.cwiseMax(v);
      g.array() = (neg_step * m.array()) / (vmax.array().sqrt() / bc2_sqrt_t + eps);
    } else {
      g.array() = (neg_step * m.array()) / (v.array().sqrt() / bc2_sqrt_t + eps);
    }
    return Options::decoupled_weight_decay && o.weight_decay != 0 ? o.lr * o.weight_decay : 0.0;
  }
};

// SGD with momentum as sgd.hpp computes it; the step is −lr·(buf or d + momentum·buf).
template <class T>
struct sgd_rule {
  using options_type = optim::sgd_options;

  static std::vector<optim::state_spec> state_specs(const options_type& o, const shape_t& s) {
    if (o.momentum == 0) return {};
    return {{"momentum_buffer", s, true, false, optim::moment::first}};
  }
  static double grad_sign(const options_type& o) { return o.maximize ? -1 : 1; }
  static double l2_decay(const options_type& o) { return o.weight_decay; }

  static double direction(const options_type& o, std::size_t, vector_map<T> d, const shape_t& shape,
                          optim::state_tensors<T>& s, const_vector_map<T>) {
    const T lr = T(o.lr), mom = T(o.momentum), damp1 = T(1 - o.dampening);
    if (o.momentum == 0) {
      d.array() = (-lr) * d.array();
      return 0;
    }
    auto it = s.find("momentum_buffer");
    if (it == s.end()) {
      tensor<T> b = tensor<T>::from_shape(shape);
      as_vector(b) = d;
      it = s.emplace("momentum_buffer", std::move(b)).first;
    } else {
      auto bv = as_vector(it->second);
      bv.array() = bv.array() * mom + damp1 * d.array();
    }
    auto bv = as_vector(it->second);
    if (o.nesterov)
      d.array() = (-lr) * (d.array() + mom * bv.array());
    else
      d.array() = (-lr) * bv.array();
    return 0;
  }
};

}  // namespace peft::detail
