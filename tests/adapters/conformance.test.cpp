// Conformance: every adapter type goes through the same checks. Adding a type = one case struct
// (how to build it) + one entry in `all_adapters` below.
#include <catch2/catch.hpp>

#include <memory>
#include <tuple>

#include "peft/adapters/adapted_linear.hpp"
#include "peft/adapters/lora.hpp"
#include "peft/adapters/dora.hpp"
#include "peft/adapters/moe.hpp"
#include "peft/adapters/nola.hpp"
#include "peft/adapters/randlora.hpp"
#include "peft/adapters/vera.hpp"
#include "peft/adapters/dct_adapter.hpp"
#include "peft/adapters/fourierft.hpp"
#include "peft/adapters/lora_xs.hpp"
#include "peft/adapters/moslora.hpp"
#include "peft/autograd/grad_check.hpp"
#include "peft/init/qr.hpp"
#include "peft/init/svd.hpp"

using namespace peft;

namespace {

// A case builds an adapter for a base Linear of shape [out, in]. `W` is the base weight, which
// inits such as PiSSA may rewrite. Flags say what the method promises.
struct lora_case {
  static constexpr const char* name = "lora";
  static constexpr bool identity_at_init = true;  // Δ = 0 right after construction
  static constexpr bool mergeable = true;         // Δ does not depend on the input
  static std::shared_ptr<adapter<double>> make(std::size_t in, std::size_t out, tensor<double>& W) {
    (void)W;
    lora_config c;
    c.r = 3;
    c.alpha = 5;
    return std::make_shared<lora<double>>(in, out, c);
  }
};
struct rslora_case {
  static constexpr const char* name = "rslora";
  static constexpr bool identity_at_init = true;
  static constexpr bool mergeable = true;
  static std::shared_ptr<adapter<double>> make(std::size_t in, std::size_t out, tensor<double>&) {
    lora_config c;
    c.r = 4;
    c.alpha = 4;
    c.use_rslora = true;
    return std::make_shared<lora<double>>(in, out, c, init::gaussian{});
  }
};
struct moe_case {
  static constexpr const char* name = "moe";
  static constexpr bool identity_at_init = true;
  static constexpr bool mergeable = false;  // token routing: no single ΔW
  static std::shared_ptr<adapter<double>> make(std::size_t in, std::size_t out, tensor<double>&) {
    moe_config c;
    c.num_experts = 3;
    c.top_k = 2;
    std::vector<std::shared_ptr<adapter<double>>> ex;
    for (std::size_t e = 0; e < 3; ++e) {
      lora_config lc;
      lc.r = 2;
      lc.seed = e;
      ex.push_back(std::make_shared<lora<double>>(in, out, lc));
    }
    return std::make_shared<moe<double>>(in, out, c, ex);
  }
};
// VeRA, NOLA, RandLoRA (randbases): the shared random projections live at model scope, so one
// static shared object serves every layer the checks build (sized for the largest, 6 -> 5).
struct vera_case {
  static constexpr const char* name = "vera";
  static constexpr bool identity_at_init = true;
  static constexpr bool mergeable = true;
  static std::shared_ptr<adapter<double>> make(std::size_t in, std::size_t out, tensor<double>&) {
    static auto shared = std::make_shared<vera_shared<double>>(4, 8, 8, 0);
    vera_config c;
    c.r = 4;
    return std::make_shared<vera<double>>(in, out, shared, c);
  }
};
struct nola_case {
  static constexpr const char* name = "nola";
  static constexpr bool identity_at_init = true;
  static constexpr bool mergeable = true;
  static std::shared_ptr<adapter<double>> make(std::size_t in, std::size_t out, tensor<double>&) {
    nola_config c;
    c.r = 3;
    c.num_basis_A = 5;
    c.num_basis_B = 4;
    c.seed = 3;
    return std::make_shared<nola<double>>(in, out, c);
  }
};
struct randlora_case {
  static constexpr const char* name = "randlora";
  static constexpr bool identity_at_init = true;
  static constexpr bool mergeable = true;
  static std::shared_ptr<adapter<double>> make(std::size_t in, std::size_t out, tensor<double>&) {
    static auto shared = std::make_shared<randlora_shared<double>>(2, 8, 8, 0);
    randlora_config c;
    c.r = 2;
    c.alpha = 2;
    return std::make_shared<randlora<double>>(in, out, shared, c);
  }
};
struct lora_xs_case {
  static constexpr const char* name = "lora_xs";
  static constexpr bool identity_at_init = true;  // with r_init_std = 0 (R = 0)
  static constexpr bool mergeable = true;
  static std::shared_ptr<adapter<double>> make(std::size_t in, std::size_t out, tensor<double>& W) {
    lora_xs_config c;
    c.r = 2;
    c.alpha = 4;
    c.r_init_std = 0;
    return std::make_shared<lora_xs<double>>(in, out, c, W);
  }
};
struct moslora_case {
  static constexpr const char* name = "moslora";
  static constexpr bool identity_at_init = true;
  static constexpr bool mergeable = true;
  static std::shared_ptr<adapter<double>> make(std::size_t in, std::size_t out, tensor<double>&) {
    moslora_config c;
    c.r = 3;
    c.alpha = 6;
    return std::make_shared<moslora<double>>(in, out, c);
  }
};
struct fourierft_case {
  static constexpr const char* name = "fourierft";
  static constexpr bool identity_at_init = false;  // PEFT default: spectrum ~ N(0, 1)
  static constexpr bool mergeable = true;
  static std::shared_ptr<adapter<double>> make(std::size_t in, std::size_t out, tensor<double>&) {
    fourierft_config c;
    c.n_frequency = 6;
    return std::make_shared<fourierft<double>>(in, out, c);
  }
};
struct dct_case {
  static constexpr const char* name = "dct";
  static constexpr bool identity_at_init = true;
  static constexpr bool mergeable = true;
  static std::shared_ptr<adapter<double>> make(std::size_t in, std::size_t out, tensor<double>&) {
    dct_config c;
    c.n_frequency = 6;
    c.scaling = 2;
    return std::make_shared<dct_adapter<double>>(in, out, c);
  }
};
// DoRA's default detached norm (paper §4.3, PEFT) is a surrogate gradient for lora_A/lora_B by
// design, which finite differences cannot confirm; this case trains the magnitude only, and
// tests/adapters/dora.test.cpp checks the detached A/B gradients against a constant-n composition.
struct dora_case {
  static constexpr const char* name = "dora";
  static constexpr bool identity_at_init = true;  // m = ||W + dW||_c at construction
  static constexpr bool mergeable = true;
  static std::shared_ptr<adapter<double>> make(std::size_t in, std::size_t out, tensor<double>& W) {
    lora_config c;
    c.r = 3;
    c.alpha = 5;
    return dora_lora<double>(in, out, c, W);
  }
  // The detached norm (DoRA §4.3) makes A's and B's gradients deliberately inexact; they are
  // checked against the constant-norm composition in dora.test.cpp instead.
  static bool exact_gradient(const std::string& name) { return name == "lora_magnitude_vector"; }
};
struct dora_attached_case {  // exact gradient through the norm: everything trainable
  static constexpr const char* name = "dora_attached_norm";
  static constexpr bool identity_at_init = true;
  static constexpr bool mergeable = true;
  static std::shared_ptr<adapter<double>> make(std::size_t in, std::size_t out, tensor<double>& W) {
    lora_config c;
    c.r = 2;
    c.alpha = 4;
    dora_config d;
    d.detach_norm = false;
    return dora_lora<double>(in, out, c, W, init::gaussian{}, d);
  }
};
// PiSSA / OLoRA: Δ = s·B·A ≠ 0 at init, and the base keeps the residual W − s·B·A, so the adapted
// layer equals the ORIGINAL layer: (W − sBA) + sBA = W. The harness compares with the original W.
struct lora_pissa_case {
  static constexpr const char* name = "lora+pissa";
  static constexpr bool identity_at_init = true;
  static constexpr bool mergeable = true;
  static std::shared_ptr<adapter<double>> make(std::size_t in, std::size_t out, tensor<double>& W) {
    lora_config c;
    c.r = 2;
    c.alpha = 6;
    return std::make_shared<lora<double>>(in, out, c, init::pissa{}, &W);
  }
};
struct lora_olora_case {
  static constexpr const char* name = "lora+olora";
  static constexpr bool identity_at_init = true;
  static constexpr bool mergeable = true;
  static std::shared_ptr<adapter<double>> make(std::size_t in, std::size_t out, tensor<double>& W) {
    lora_config c;
    c.r = 2;
    c.alpha = 6;
    return std::make_shared<lora<double>>(in, out, c, init::olora{}, &W);
  }
};
// ---- add new cases above this line ----

using all_adapters = std::tuple<lora_case, rslora_case, moe_case
                                , vera_case, nola_case, randlora_case
                                , lora_xs_case, moslora_case, fourierft_case, dct_case
                                , dora_case, dora_attached_case
                                , lora_pissa_case, lora_olora_case
                                /* ---- add new case names above this line ---- */>;

struct fixture {
  std::shared_ptr<adapted_linear<double>> layer;
  tensor<double> W_original;    // before the adapter's init touched it (PiSSA/OLoRA residuals)
  tensor<double> W_after_init;
};

template <class Case>
fixture build(std::size_t in = 6, std::size_t out = 5, std::uint64_t seed = 17) {
  rng g(seed);
  auto base = std::make_shared<nn::linear<double>>(in, out, true, g);
  base->freeze();
  tensor<double> original = base->weight.value();
  auto a = Case::make(in, out, base->weight.value());
  return {std::make_shared<adapted_linear<double>>(base, a), original, base->weight.value()};
}

// Moves every trainable parameter away from its init so that no gradient is trivially zero.
void perturb(adapted_linear<double>& layer, std::uint64_t seed) {
  rng g(seed);
  for (auto& [name, v] : layer.named_parameters())
    if (v.requires_grad())
      for (auto& e : v.value()) e += g.normal(0.0, 0.3);
}

double max_abs_diff(const tensor<double>& a, const tensor<double>& b) {
  return (as_vector(a) - as_vector(b)).cwiseAbs().maxCoeff();
}

}  // namespace

TEMPLATE_LIST_TEST_CASE("adapter conformance", "[adapters][conformance]", all_adapters) {
  using Case = TestType;
  INFO("adapter: " << Case::name);
  rng g(99);
  auto x = constant<double>(randn<double>({2, 3, 6}, g));

  SECTION("identity at init where promised") {
    // y = x·W_originalᵀ + b, with W_original the weight before the adapter was attached.
    auto f = build<Case>();
    auto y = f.layer->forward(x);
    matrix<double> ref = as_matrix(x.value()) * as_matrix(f.W_original).transpose();
    ref.rowwise() += as_vector(f.layer->base_layer->bias.value()).transpose();
    const double d = (as_matrix(y.value()) - ref).cwiseAbs().maxCoeff();
    if constexpr (Case::identity_at_init) REQUIRE(d < 1e-12);
    else REQUIRE(d > 1e-6);  // a method documented as non-identity must really move the output
  }

  SECTION("merged output equals unmerged; unmerge restores W") {
    if constexpr (Case::mergeable) {
      auto f = build<Case>();
      perturb(*f.layer, 1);
      f.layer->eval();
      auto y = f.layer->forward(x);
      // Dense check of the fast path: y = x·(W + ΔW)ᵀ + b.
      matrix<double> Wm = as_matrix(f.layer->base_layer->weight.value());
      matrix<double> dW = f.layer->get_adapter().delta_weight(Wm);
      matrix<double> ref = as_matrix(x.value()) * (Wm + dW).transpose();
      ref.rowwise() += as_vector(f.layer->base_layer->bias.value()).transpose();
      REQUIRE((as_matrix(y.value()) - ref).cwiseAbs().maxCoeff() < 1e-10);

      f.layer->merge();
      auto ym = f.layer->forward(x);
      REQUIRE(max_abs_diff(ym.value(), y.value()) < 1e-10);
      f.layer->unmerge();
      REQUIRE(max_abs_diff(f.layer->base_layer->weight.value(), f.W_after_init) < 1e-12);
      auto yu = f.layer->forward(x);
      REQUIRE(max_abs_diff(yu.value(), y.value()) < 1e-10);
    }
  }

  SECTION("only adapter parameters get gradients") {
    auto f = build<Case>();
    perturb(*f.layer, 2);
    auto y = f.layer->forward(x);
    y.backward(ones<double>(y.shape()));
    REQUIRE_FALSE(f.layer->base_layer->weight.has_grad());
    REQUIRE_FALSE(f.layer->base_layer->bias.has_grad());
    std::size_t with_grad = 0;
    for (auto& [name, v] : f.layer->named_parameters()) {
      INFO(name);
      if (v.requires_grad()) {
        REQUIRE(v.has_grad());
        ++with_grad;
      } else {
        REQUIRE_FALSE(v.has_grad());
      }
    }
    REQUIRE(with_grad > 0);
  }

  SECTION("gradcheck in double (input and every trainable parameter)") {
    auto f = build<Case>(4, 3);
    perturb(*f.layer, 3);
    f.layer->eval();  // no dropout noise between finite-difference evaluations
    auto xi = parameter<double>(randn<double>({3, 4}, g));
    std::vector<variable<double>> inputs{xi};
    for (auto& [name, v] : f.layer->named_parameters()) {
      bool exact = true;
      if constexpr (requires { Case::exact_gradient(name); }) exact = Case::exact_gradient(name);
      if (v.requires_grad() && exact) inputs.push_back(v);
    }
    auto r = grad_check([&](auto&) { return f.layer->forward(xi); }, inputs);
    INFO(r.report);
    REQUIRE(r.ok);
  }

  SECTION("state dict round-trips into a fresh layer") {
    auto f = build<Case>();
    perturb(*f.layer, 4);
    f.layer->eval();
    auto y = f.layer->forward(x);
    auto sd = f.layer->get_state_dict();
    auto f2 = build<Case>(6, 5, 18);  // different base init
    f2.layer->load_state_dict(sd);
    f2.layer->eval();
    REQUIRE(max_abs_diff(f2.layer->forward(x).value(), y.value()) == 0.0);
  }
}
