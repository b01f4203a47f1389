#pragma once
// projected<Base, Projector>: any base optimizer (AdamW, Adam, SGD with momentum, Adafactor,
// AdamW-8bit) over low-rank projected gradients, with any Projector (GaLore, Flora, COAP, DCT,
// identity). Every 2-D parameter whose both dims are >= rank (and that `select` accepts) gets its
// own projector, built by a factory with a per-parameter seed; its moments live in the projector's
// low shape and the step is projected back (the projector applies its scale) onto the full
// weight. Other parameters (vectors, small matrices) take the base optimizer's full-rank update,
// bit for bit the same as the base optimizer's. See rule_optimizer.hpp for the step and the
// checkpoint layout (projector state included, so resuming is bit-exact).
//
//   optim::galore_options go;  go.rank = 128;  go.update_proj_gap = 200;  go.scale = 0.25;
//   optim::projected<optim::adamw<float>, optim::galore_projector<float>> opt(
//       model.parameters(), {.lr = 1e-3}, go);
//   optim::projected<optim::adamw<float>, optim::galore_projector<float>, optim::q8_storage<>>
//       opt8(...);                                        // low-rank moments in 8 bits
//
// Weight decay follows the base: decoupled on the full weight for AdamW and Adafactor; for Adam
// and SGD (L2), wd·W is added to the full gradient before projection, as those bases do.
// Differences from the GaLore reference (galore_torch/adamw.py): our AdamW is torch's (decay
// before the update, eps added to sqrt(v)/sqrt(1 − β2^t)); the reference is transformers' older
// AdamW (eps added to sqrt(v), decay after the update).
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "peft/optim/adafactor.hpp"
#include "peft/optim/adam.hpp"
#include "peft/optim/projection/projector.hpp"
#include "peft/optim/projection/projector_state.hpp"
#include "peft/optim/quant8.hpp"
#include "peft/optim/rule_optimizer.hpp"
#include "peft/optim/sgd.hpp"

namespace peft::optim {

// The update rule (and default state storage) of a base optimizer type.
template <class Base>
struct projected_rule;
template <class T>
struct projected_rule<adamw<T>> {
  using type = peft::detail::adam_rule<T, adamw_options>;
  using storage = full_precision_storage;
};
template <class T>
struct projected_rule<adam<T>> {
  using type = peft::detail::adam_rule<T, adam_options>;
  using storage = full_precision_storage;
};
template <class T>
struct projected_rule<sgd<T>> {
  using type = peft::detail::sgd_rule<T>;
  using storage = full_precision_storage;
};
template <class T>
struct projected_rule<adafactor<T>> {
  using type = peft::detail::adafactor_rule<T>;
  using storage = full_precision_storage;
};
template <class T>
struct projected_rule<adamw8bit<T>> {
  using type = peft::detail::adam_rule<T, adamw_options>;
  using storage = q8_storage<>;
};

template <class Base, class Projector, class Storage = typename projected_rule<Base>::storage>
class projected : public rule_optimizer<typename Base::value_type, typename projected_rule<Base>::type,
                                        Projector, Storage> {
 public:
  using value_type = typename Base::value_type;
  using base_type = Base;
  using engine = rule_optimizer<value_type, typename projected_rule<Base>::type, Projector, Storage>;
  using typename engine::factory_type;
  using typename engine::options_type;

  static_assert(projector<Projector, value_type>,
                "projected: Projector does not model optim::projector (projection/projector.hpp)");
  static_assert(checkpointable_projector<Projector, value_type>,
                "projected: Projector needs save_state(projector_state<T>&) const and "
                "load_state(const projector_state<T>&) (projection/projector_state.hpp) so that "
                "checkpoints resume bit-exactly");

  // Options a projector is built from: Projector(popts, rows, cols, seed), with a rank.
  template <class PO>
  static constexpr bool buildable =
      std::is_constructible_v<Projector, const PO&, std::size_t, std::size_t, std::uint64_t> &&
      requires(const PO& o) { { o.rank } -> std::convertible_to<std::size_t>; };

  // Projector built as Projector(popts, rows, cols, seed); eligibility from popts.rank.
  template <class PO = typename Projector::options_type>
    requires buildable<PO>
  projected(std::vector<variable<value_type>> params, const options_type& base_options,
            const PO& popts, const projected_options& po = {})
      : engine(std::move(params), base_options, rank_of(popts), factory_from(popts), po) {}
  template <class PO = typename Projector::options_type>
    requires buildable<PO>
  projected(std::vector<param_group<value_type>> groups, const options_type& base_defaults,
            const PO& popts, const projected_options& po = {})
      : engine(std::move(groups), base_defaults, rank_of(popts), factory_from(popts), po) {}

  // Projector built by factory(site) for every eligible parameter at `rank`.
  projected(std::vector<variable<value_type>> params, const options_type& base_options,
            std::size_t rank, factory_type factory, const projected_options& po = {})
      : engine(std::move(params), base_options, rank, std::move(factory), po) {}
  projected(std::vector<param_group<value_type>> groups, const options_type& base_defaults,
            std::size_t rank, factory_type factory, const projected_options& po = {})
      : engine(std::move(groups), base_defaults, rank, std::move(factory), po) {}

 private:
  template <class PO>
  static std::size_t rank_of(const PO& popts) {
    if constexpr (requires { popts.validate(std::string()); }) {
      std::string who = "projector";
      if constexpr (requires { PO::name; }) who = PO::name;
      popts.validate(who);
    }
    return popts.rank;
  }
  template <class PO>
  static factory_type factory_from(const PO& popts) {
    return [popts](const projector_site& s) { return Projector(popts, s.rows, s.cols, s.seed); };
  }
};

}  // namespace peft::optim
