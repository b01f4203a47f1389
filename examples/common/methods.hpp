#pragma once
// Choosing what to train, shared by finetune_fashion and compare_adapters: one function per
// fine-tuning method, each showing how that adapter is built and injected with peft's API, and
// one function building the optimizer (AdamW, or AdamW on low-rank projected gradients).
//
// Every adapter method wraps the `targets` Linear layers (by name, as PEFT's target_modules) and
// keeps the `trainable_modules` (the new classifier head) fully trainable, as PEFT's
// modules_to_save; everything else is frozen. "full" trains everything, "head" only the head.
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "peft/adapters/adapted_linear.hpp"
#include "peft/adapters/dct_adapter.hpp"
#include "peft/adapters/dora.hpp"
#include "peft/adapters/fourierft.hpp"
#include "peft/adapters/inject.hpp"
#include "peft/adapters/lora.hpp"
#include "peft/adapters/lora_xs.hpp"
#include "peft/adapters/moe.hpp"
#include "peft/adapters/moslora.hpp"
#include "peft/adapters/nola.hpp"
#include "peft/adapters/randlora.hpp"
#include "peft/adapters/vera.hpp"
#include "peft/nn/linear.hpp"
#include "peft/optim/adam.hpp"
#include "peft/optim/projected.hpp"
#include "peft/optim/projection/coap.hpp"
#include "peft/optim/projection/dct.hpp"
#include "peft/optim/projection/flora.hpp"
#include "peft/optim/projection/galore.hpp"

namespace examples {

// A method's defaults: `rank` is its size knob (LoRA rank, VeRA/RandLoRA rank, LoRA-XS's r of
// the r×r matrix, number of spectral coefficients for FourierFT/DCT), `alpha` its scale.
struct method_info {
  const char* name;
  const char* summary;
  std::size_t rank;
  double alpha;
  double lr;
};

// The methods and the defaults used when --rank / --alpha / --lr are not given (picked on this
// task; adapters with few or fixed-scale parameters want larger learning rates).
inline const std::vector<method_info>& methods() {
  static const std::vector<method_info> m = {
      {"head", "train only the classifier head (linear probe)", 0, 0, 1e-2},
      {"full", "train every parameter (full fine-tuning)", 0, 0, 3e-3},
      {"lora", "LoRA: W + (alpha/r)·B·A", 4, 8, 3e-3},
      {"rslora", "rank-stabilised LoRA: W + (alpha/sqrt r)·B·A", 4, 8, 3e-3},
      {"dora", "DoRA: magnitude m · direction (W + s·B·A)/||·||", 4, 8, 3e-3},
      {"vera", "VeRA: diag(b)·B·diag(d)·A, A and B shared frozen random", 128, 0, 2e-2},
      {"moe", "mixture of 4 LoRA experts (rank r), top-2 token routing", 4, 8, 3e-3},
      {"loraxs", "LoRA-XS: B·R·A, A and B from the SVD of W, only R (r×r) trained", 32, 32, 3e-2},
      {"moslora", "MoSLoRA: B·M·A with a trained r×r mixer M", 4, 8, 3e-3},
      {"fourierft", "FourierFT: n trained spectral coefficients, ΔW = IDFT2", 1000, 150, 5e-2},
      {"dct", "DCT adapter: n trained DCT coefficients, ΔW = IDCT2", 1000, 1, 5e-2},
      {"nola", "NOLA: A, B mixtures of 256 frozen random bases each", 8, 8, 1e-2},
      {"randlora", "RandLoRA: full-rank sum of random bases with trained scalings", 32, 640, 2e-3},
  };
  return m;
}

inline const method_info& method_by_name(const std::string& name) {
  for (auto& m : methods())
    if (name == m.name) return m;
  throw std::invalid_argument("unknown adapter method '" + name + "'");
}

inline std::vector<std::string> method_names() {
  std::vector<std::string> out;
  for (auto& m : methods()) out.push_back(m.name);
  return out;
}

struct method_options {
  std::string method = "lora";
  std::size_t rank = 0;  // 0 = the method's default
  double alpha = 0;      // 0 = the method's default
  std::uint64_t seed = 0;
  std::vector<std::string> targets{"fc1", "fc2"};  // layers that get an adapter
  std::vector<std::string> trainable_modules{"head"};  // kept fully trainable

  std::size_t rank_or_default() const { return rank ? rank : method_by_name(method).rank; }
  double alpha_or_default() const { return alpha ? alpha : method_by_name(method).alpha; }
};

namespace detail {
// Base weight shapes [out, in] of the targets, for the shared random bases of VeRA / RandLoRA.
template <class T>
std::vector<peft::shape_t> target_shapes(peft::nn::module<T>& model,
                                         const std::vector<std::string>& targets) {
  std::vector<peft::shape_t> shapes;
  for (auto& name : targets) {
    auto* lin = dynamic_cast<peft::nn::linear<T>*>(model.find_module(name).get());
    if (!lin) throw std::invalid_argument("target '" + name + "' is not a Linear layer");
    shapes.push_back(lin->weight.shape());
  }
  return shapes;
}
}  // namespace detail

// Makes the chosen parameters of `model` trainable (injecting adapters for adapter methods) and
// returns a one-line description of what is trained.
template <class T>
std::string apply_method(peft::nn::module<T>& model, const method_options& mo) {
  using namespace peft;
  const std::string& m = mo.method;
  if (m == "full") {
    model.unfreeze();
    return "all parameters trainable";
  }
  if (m == "head") {
    model.freeze();
    for (auto& name : mo.trainable_modules) model.find_module(name)->unfreeze();
    return "only the classifier head is trainable";
  }

  const std::size_t r = mo.rank_or_default();
  const double alpha = mo.alpha_or_default();
  inject_options opt;
  opt.targets = target_modules::list(mo.targets);
  opt.modules_to_save = mo.trainable_modules;

  // Each factory receives layer_info (path, in, out, r, alpha, base Linear, index) for one
  // target and returns the adapter for it; inject_adapters wraps the layer and freezes the rest.
  if (m == "lora" || m == "rslora") {
    lora_config c;
    c.r = r;
    c.alpha = alpha;
    c.use_rslora = m == "rslora";
    c.seed = mo.seed;
    inject_lora(model, c, opt);  // the shorthand for LoRA
  } else if (m == "dora") {
    inject_adapters<T>(model, opt, r, alpha, [&](const layer_info<T>& li) {
      lora_config c;
      c.r = li.r;
      c.alpha = li.alpha;
      c.seed = mo.seed + li.index;
      return dora_lora<T>(li.in, li.out, c, li.base->weight.value());
    });
  } else if (m == "vera") {
    // One pair of frozen random projections for the whole model, sized for the largest layer.
    vera_config c;
    c.r = r;
    c.projection_prng_key = mo.seed;
    auto shared = std::make_shared<vera_shared<T>>(r, detail::target_shapes(model, mo.targets),
                                                   c.projection_prng_key);
    inject_adapters<T>(model, opt, r, alpha, [&](const layer_info<T>& li) {
      return std::make_shared<vera<T>>(li.in, li.out, shared, c);
    });
  } else if (m == "moe") {
    inject_adapters<T>(model, opt, r, alpha, [&](const layer_info<T>& li) {
      moe_config c;
      c.num_experts = 4;
      c.top_k = 2;
      c.seed = mo.seed + 100 * li.index;
      std::vector<std::shared_ptr<adapter<T>>> experts;
      for (std::size_t e = 0; e < c.num_experts; ++e) {
        lora_config lc;
        lc.r = li.r;
        lc.alpha = li.alpha;
        lc.seed = mo.seed + 100 * li.index + e + 1;
        experts.push_back(std::make_shared<lora<T>>(li.in, li.out, lc));
      }
      return std::make_shared<moe<T>>(li.in, li.out, c, std::move(experts));
    });
  } else if (m == "loraxs") {
    inject_adapters<T>(model, opt, r, alpha, [&](const layer_info<T>& li) {
      lora_xs_config c;
      c.r = li.r;
      c.alpha = li.alpha;
      c.seed = mo.seed + li.index;
      // A and B come from the truncated SVD of this layer's pretrained weight.
      return std::make_shared<lora_xs<T>>(li.in, li.out, c, li.base->weight.value());
    });
  } else if (m == "moslora") {
    inject_adapters<T>(model, opt, r, alpha, [&](const layer_info<T>& li) {
      moslora_config c;
      c.r = li.r;
      c.alpha = li.alpha;
      c.seed = mo.seed + li.index;
      return std::make_shared<moslora<T>>(li.in, li.out, c);
    });
  } else if (m == "fourierft") {
    inject_adapters<T>(model, opt, r, alpha, [&](const layer_info<T>& li) {
      fourierft_config c;
      c.n_frequency = std::min(li.r, li.in * li.out);
      c.scaling = li.alpha;
      c.init_weights = true;  // start at ΔW = 0 so "before" is the pretrained model
      c.random_loc_seed = mo.seed + 777 + li.index;
      c.seed = mo.seed + li.index;
      return std::make_shared<fourierft<T>>(li.in, li.out, c);
    });
  } else if (m == "dct") {
    inject_adapters<T>(model, opt, r, alpha, [&](const layer_info<T>& li) {
      dct_config c;
      c.n_frequency = std::min(li.r, li.in * li.out);
      c.scaling = li.alpha;
      c.random_loc_seed = mo.seed + 777 + li.index;
      c.seed = mo.seed + li.index;
      return std::make_shared<dct_adapter<T>>(li.in, li.out, c);
    });
  } else if (m == "nola") {
    inject_adapters<T>(model, opt, r, alpha, [&](const layer_info<T>& li) {
      nola_config c;
      c.r = li.r;
      c.alpha = li.alpha;
      c.num_basis_A = c.num_basis_B = 256;
      c.seed = mo.seed + 1000 * (li.index + 1);
      return std::make_shared<nola<T>>(li.in, li.out, c);
    });
  } else if (m == "randlora") {
    randlora_config c;
    c.r = r;
    c.alpha = alpha;
    c.projection_prng_key = mo.seed;
    auto shared = std::make_shared<randlora_shared<T>>(
        r, detail::target_shapes(model, mo.targets), c.projection_prng_key, c.basis());
    inject_adapters<T>(model, opt, r, alpha, [&](const layer_info<T>& li) {
      return std::make_shared<randlora<T>>(li.in, li.out, shared, c);
    });
  } else {
    throw std::invalid_argument("unknown adapter method '" + m + "'");
  }
  return method_by_name(m).summary;
}

// ---------------------------------------------------------------- optimizers

inline const std::vector<std::string>& optimizer_names() {
  static const std::vector<std::string> n = {"adamw", "galore", "flora", "coap", "dct"};
  return n;
}

struct optimizer_options {
  std::string name = "adamw";
  double lr = 1e-3;
  double weight_decay = 0.0;
  std::size_t proj_rank = 32;   // rank of the projected gradient
  std::size_t proj_gap = 100;   // steps between basis refreshes (GaLore/COAP/DCT), Flora resample
  std::uint64_t seed = 0;
};

// AdamW, or AdamW whose moments live in a low-rank projection of each gradient matrix. A
// parameter is projected only if it is 2-D with both dimensions >= proj_rank; every other
// parameter (biases, the 5-row head, small adapter factors) takes the plain AdamW step. So the
// projected optimizers change something mainly for --adapter full, where the big weight
// matrices are trained.
template <class T>
std::unique_ptr<peft::optim::optimizer<T>> make_optimizer(std::vector<peft::variable<T>> params,
                                                          const optimizer_options& o) {
  using namespace peft::optim;
  adamw_options ao;
  ao.lr = o.lr;
  ao.weight_decay = o.weight_decay;
  projected_options po;
  po.seed = o.seed;
  if (o.name == "adamw") return std::make_unique<adamw<T>>(std::move(params), ao);
  if (o.name == "galore") {
    galore_options g;
    g.rank = o.proj_rank;
    g.update_proj_gap = o.proj_gap;
    g.scale = 1.0;  // the lr alone sets the step size, as for the others
    return std::make_unique<projected<adamw<T>, galore_projector<T>>>(std::move(params), ao, g, po);
  }
  if (o.name == "flora") {
    flora_options f;
    f.rank = o.proj_rank;
    f.kappa = o.proj_gap;
    return std::make_unique<projected<adamw<T>, flora_projector<T>>>(std::move(params), ao, f, po);
  }
  if (o.name == "coap") {
    coap_options c;
    c.rank = o.proj_rank;
    c.update_interval = std::max<std::size_t>(1, o.proj_gap / 5);  // re-projection every proj_gap
    c.reproject_factor = 5;
    return std::make_unique<projected<adamw<T>, coap_projector<T>>>(std::move(params), ao, c, po);
  }
  if (o.name == "dct") {
    dct_options d;
    d.rank = o.proj_rank;
    d.update_interval = o.proj_gap;
    return std::make_unique<projected<adamw<T>, dct_projector<T>>>(std::move(params), ao, d, po);
  }
  throw std::invalid_argument("unknown optimizer '" + o.name + "'");
}

}  // namespace examples
