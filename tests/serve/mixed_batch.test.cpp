#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "peft/adapters/dora.hpp"
#include "peft/adapters/inject.hpp"
#include "peft/adapters/lora.hpp"
#include "peft/adapters/moe.hpp"
#include "peft/adapters/vera.hpp"
#include "peft/core/random.hpp"
#include "peft/core/threads.hpp"
#include "peft/nn/transformer.hpp"
#include "peft/serve/mixed_batch.hpp"
#include "peft/serve/mixed_linear.hpp"
#include "peft/serve/served_adapter.hpp"
#include "../support/tiny_llama.hpp"

using namespace peft;
using Catch::Matchers::Contains;

namespace {

template <class T>
T tol() {
  return std::is_same_v<T, double> ? T(1e-12) : T(2e-5);
}

// max |a - b| / max(1, max |b|)
template <class T>
double rel_err(const matrix<T>& a, const matrix<T>& b) {
  REQUIRE(a.rows() == b.rows());
  REQUIRE(a.cols() == b.cols());
  if (a.size() == 0) return 0;
  return double((a - b).cwiseAbs().maxCoeff()) / std::max(1.0, double(b.cwiseAbs().maxCoeff()));
}

lora_config lcfg(std::size_t r, double alpha, bool rs = false, std::uint64_t seed = 0) {
  lora_config c;
  c.r = r;
  c.alpha = alpha;
  c.use_rslora = rs;
  c.seed = seed;
  return c;
}

// A layer [out, in] and a zoo of library adapters on it, with random (non-identity) weights.
template <class T>
struct zoo {
  std::size_t in = 12, out = 10;
  tensor<T> W, b;
  std::vector<std::shared_ptr<adapter<T>>> lib;  // library adapters (the reference)
  std::vector<serve::layer_adapter<T>> served;
  std::shared_ptr<vera_shared<T>> shared;

  explicit zoo(std::uint64_t seed = 3) {
    rng g(seed);
    W = randn<T>({out, in}, g, 0.0, 0.3);
    b = randn<T>({out}, g);
    auto add_lora = [&](std::size_t r, double alpha, bool rs) {
      auto l = std::make_shared<lora<T>>(in, out, lcfg(r, alpha, rs, g.next_u64()));
      fill_normal(l->lora_B.value(), 0.0, 0.5, g);
      lib.push_back(l);
    };
    add_lora(2, 4.0, false);   // 0: s = 2
    add_lora(4, 3.0, false);   // 1: s = 0.75
    add_lora(8, 16.0, false);  // 2: s = 2
    add_lora(4, 6.0, true);    // 3: rsLoRA s = 3
    // 4: DoRA over LoRA r=4, with B and the magnitude moved away from their init.
    auto d = dora_lora<T>(in, out, lcfg(4, 8.0, false, 11), W);
    fill_normal(dynamic_cast<lora<T>&>(d->inner()).lora_B.value(), 0.0, 0.5, g);
    for (auto& m : d->lora_magnitude_vector.value()) m *= T(1.0 + 0.5 * g.uniform());
    lib.push_back(d);
    // 5, 6: VeRA adapters of ranks 8 and 4 sharing one projection pair of rank 8.
    shared = std::make_shared<vera_shared<T>>(8, in + 3, out + 2, 99);
    for (std::size_t r : {8u, 4u}) {
      vera_config vc;
      vc.r = r;
      auto v = std::make_shared<vera<T>>(in, out, shared, vc);
      fill_normal(v->vera_lambda_b.value(), 0.0, 1.0, g);
      fill_normal(v->vera_lambda_d.value(), 0.0, 1.0, g);
      lib.push_back(v);
    }
    for (auto& a : lib) served.push_back(serve::make_layer_adapter<T>(*a, as_matrix(W)));
  }
  std::vector<const serve::layer_adapter<T>*> ptrs() const {
    std::vector<const serve::layer_adapter<T>*> p;
    for (auto& s : served) p.push_back(&s);
    return p;
  }
  // Row i through its own merged weight W + ΔW_i (the library adapter's delta_weight).
  matrix<T> reference(const matrix<T>& X, const std::vector<int>& ids) const {
    matrix<T> Y(X.rows(), Eigen::Index(out));
    for (Eigen::Index i = 0; i < X.rows(); ++i) {
      matrix<T> Wi = as_matrix(W);
      if (ids[std::size_t(i)] >= 0) Wi += lib[std::size_t(ids[std::size_t(i)])]->delta_weight(as_matrix(W));
      Y.row(i) = X.row(i) * Wi.transpose() + as_vector(b).transpose();
    }
    return Y;
  }
  matrix<T> run(const matrix<T>& X, const std::vector<int>& ids, bool with_bias = true) const {
    matrix<T> Y(X.rows(), Eigen::Index(out));
    const auto p = ptrs();
    serve::mixed_linear_forward<T>(X, as_matrix(W), with_bias ? b.data() : nullptr, ids, p, Y);
    return Y;
  }
};

template <class T>
matrix<T> random_rows(std::size_t n, std::size_t in, std::uint64_t seed) {
  rng g(seed);
  return as_matrix(randn<T>({n, in}, g));
}

}  // namespace

TEMPLATE_TEST_CASE("mixed_linear_forward equals each row through its own merged weight", "[serve][mixed]", float,
                   double) {
  using T = TestType;
  zoo<T> z;
  // Every kind, base rows, interleaved so groups are not contiguous; one adapter appears once.
  std::vector<int> ids{0, 5, -1, 1, 2, 3, 4, 6, 0, -1, 2, 5, 6, 4, 1, 3, 0, 0, 6, -1, 2, 4};
  const matrix<T> X = random_rows<T>(ids.size(), z.in, 7);
  const matrix<T> Y = z.run(X, ids);
  const matrix<T> R = z.reference(X, ids);
  CHECK(rel_err<T>(Y, R) < tol<T>());
  // Groups spread over threads, or one after another: the same numbers.
  const int threads = num_threads();
  for (int nt : {1, 3}) {
    set_num_threads(nt);
    CHECK(rel_err<T>(z.run(X, ids), Y) < tol<T>());
  }
  set_num_threads(threads);

  // The same through each library adapter's own forward on its rows (an independent path).
  for (std::size_t k = 0; k < z.lib.size(); ++k) {
    std::vector<Eigen::Index> rows;
    for (std::size_t i = 0; i < ids.size(); ++i)
      if (ids[i] == int(k)) rows.push_back(Eigen::Index(i));
    matrix<T> Xk(Eigen::Index(rows.size()), Eigen::Index(z.in)), Yk(Eigen::Index(rows.size()), Eigen::Index(z.out));
    for (std::size_t j = 0; j < rows.size(); ++j) Xk.row(Eigen::Index(j)) = X.row(rows[j]);
    adapter_ctx<T> ctx;
    z.lib[k]->forward(Xk, as_matrix(z.W), z.b.data(), Yk, ctx, false);
    matrix<T> Ys(Yk.rows(), Yk.cols());
    for (std::size_t j = 0; j < rows.size(); ++j) Ys.row(Eigen::Index(j)) = Y.row(rows[j]);
    INFO("adapter " << k << " (" << z.lib[k]->method() << ")");
    CHECK(rel_err<T>(Ys, Yk) < tol<T>());
  }
}

TEMPLATE_TEST_CASE("mixed_linear_forward: contiguous, single-adapter, empty and base-only batches", "[serve][mixed]",
                   float, double) {
  using T = TestType;
  zoo<T> z;
  const std::size_t n = 9;
  const matrix<T> X = random_rows<T>(n, z.in, 8);
  SECTION("all rows one adapter (each kind), in place and gathered") {
    for (int k = 0; k < int(z.lib.size()); ++k) {
      INFO("adapter " << k);
      std::vector<int> ids(n, k);
      CHECK(rel_err<T>(z.run(X, ids), z.reference(X, ids)) < tol<T>());
      ids[0] = -1;
      ids[4] = -1;  // the group is now split into two runs -> gathered
      CHECK(rel_err<T>(z.run(X, ids), z.reference(X, ids)) < tol<T>());
    }
  }
  SECTION("sorted runs (in place) give the same as the reference") {
    std::vector<int> ids{0, 0, 1, 1, 1, 4, 4, 5, 6};
    CHECK(rel_err<T>(z.run(X, ids), z.reference(X, ids)) < tol<T>());
  }
  SECTION("base-only rows and empty groups are the plain Linear") {
    std::vector<int> ids(n, -1);
    const matrix<T> base = (X * as_matrix(z.W).transpose()).rowwise() + as_vector(z.b).transpose();
    CHECK(rel_err<T>(z.run(X, ids), base) < tol<T>());
    // Null adapters are base too.
    std::vector<const serve::layer_adapter<T>*> none(3, nullptr);
    std::vector<int> some{0, 1, 2, 0, 1, 2, 0, 1, 2};
    matrix<T> Y(X.rows(), Eigen::Index(z.out));
    serve::mixed_linear_forward<T>(X, as_matrix(z.W), z.b.data(), some, none, Y);
    CHECK(rel_err<T>(Y, base) < tol<T>());
  }
  SECTION("no bias") {
    std::vector<int> ids{4, 4, 0, -1, 5, 6, 4, 1, 4};
    matrix<T> R = z.reference(X, ids);
    R.rowwise() -= as_vector(z.b).transpose();
    CHECK(rel_err<T>(z.run(X, ids, false), R) < tol<T>());
  }
  SECTION("zero rows") {
    const matrix<T> X0(0, Eigen::Index(z.in));
    std::vector<int> ids;
    CHECK(z.run(X0, ids).rows() == 0);
  }
}

TEST_CASE("mixed_linear_forward: bad ids and shapes throw naming them", "[serve][mixed]") {
  using T = double;
  zoo<T> z;
  const matrix<T> X = random_rows<T>(4, z.in, 9);
  std::vector<int> ids{0, 1, 42, -1};
  CHECK_THROWS_AS(z.run(X, ids), value_error);
  CHECK_THROWS_WITH(z.run(X, ids), Contains("row 2 has adapter id 42") && Contains("7 adapters"));
  ids[2] = -3;
  CHECK_THROWS_WITH(z.run(X, ids), Contains("adapter id -3"));
  std::vector<int> short_ids{0, 1};
  CHECK_THROWS_AS(z.run(X, short_ids), shape_error);
  // An adapter built for another layer shape.
  rng g(1);
  lora<T> other(z.in + 1, z.out, lcfg(2, 2));
  const tensor<T> W2 = randn<T>({z.out, z.in + 1}, g);
  const auto bad = serve::make_layer_adapter<T>(other, as_matrix(W2));
  std::vector<const serve::layer_adapter<T>*> p{&bad};
  std::vector<int> ids0{0, 0, 0, 0};
  matrix<T> Y(4, Eigen::Index(z.out));
  CHECK_THROWS_AS(serve::mixed_linear_forward<T>(X, as_matrix(z.W), nullptr, ids0, p, Y), shape_error);
  CHECK_THROWS_WITH(serve::mixed_linear_forward<T>(X, as_matrix(z.W), nullptr, ids0, p, Y),
                    Contains("in=13, out=10") && Contains("layer with in=12, out=10"));
  // Adapters without low-rank factors are refused when converted.
  moe_config mc;
  mc.num_experts = 2;
  mc.top_k = 1;
  std::vector<std::shared_ptr<adapter<T>>> ex{std::make_shared<lora<T>>(z.in, z.out, lcfg(2, 2)),
                                              std::make_shared<lora<T>>(z.in, z.out, lcfg(2, 2, false, 1))};
  moe<T> m(z.in, z.out, mc, ex);
  CHECK_THROWS_WITH(serve::make_layer_adapter<T>(m, as_matrix(z.W)), Contains("'moe'"));
}

TEST_CASE("layer_adapter: DoRA row scale is precomputed, delta_weight matches the library", "[serve][mixed]") {
  using T = double;
  zoo<T> z;
  for (std::size_t k = 0; k < z.lib.size(); ++k) {
    INFO("adapter " << k);
    const matrix<T> mine = z.served[k].delta_weight(as_matrix(z.W));
    const matrix<T> theirs = z.lib[k]->delta_weight(as_matrix(z.W));
    CHECK(rel_err<T>(mine, theirs) < 1e-13);
  }
  const auto& d = dynamic_cast<const dora<T>&>(*z.lib[4]);
  const vector<T> s = as_vector(d.lora_magnitude_vector.value()).cwiseQuotient(d.weight_norm(as_matrix(z.W)));
  CHECK((z.served[4].row_scale - s).cwiseAbs().maxCoeff() < 1e-14);
  CHECK(z.served[4].kind == serve::adapter_kind::dora);
  CHECK(z.served[5].kind == serve::adapter_kind::vera);
  CHECK(z.served[5].vera.get() == z.shared.get());
  CHECK(z.served[0].bytes() == (2 * 12 + 10 * 2) * sizeof(T));
}

// ---- whole model ----

namespace {
nn::llama_config tiny_llama() { return test::tiny_llama_config(40); }
std::shared_ptr<nn::llama<double>> make_llama() {
  rng g(5);
  return std::make_shared<nn::llama<double>>(tiny_llama(), g);
}
void randomize(nn::module<double>& m, std::uint64_t seed) {
  rng g(seed);
  for (auto& [name, v] : m.named_parameters())
    if (name.find("lora_B") != std::string::npos || name.find("vera_lambda") != std::string::npos)
      fill_normal(v.value(), 0.0, 0.3, g);
    else if (name.find("magnitude") != std::string::npos)
      for (auto& x : v.value()) x *= 1.0 + 0.3 * g.uniform();
}
inject_options targets(std::vector<std::string> names) {
  inject_options o;
  o.targets = target_modules::list(std::move(names));
  return o;
}
tensor<double> seq_logits(nn::llama<double>& m, const std::vector<std::int64_t>& ids) {
  no_grad_guard ng;
  return m.forward(ids, 1, ids.size()).value();
}
}  // namespace

TEST_CASE("forward_with_adapters: a llama batch with a different adapter per sequence", "[serve][mixed][model]") {
  // Three adapted copies of one base model (same seed): LoRA on attention, DoRA on the MLP,
  // VeRA on q/v. Each copy's own forward is the reference for its sequences.
  std::vector<std::shared_ptr<nn::llama<double>>> copies;
  std::vector<std::shared_ptr<const serve::served_adapter<double>>> served;
  {
    auto a = make_llama();
    inject_lora<double>(*a, lcfg(4, 8), targets({"q_proj", "k_proj", "v_proj", "o_proj"}));
    randomize(*a, 1);
    auto b = make_llama();
    inject_adapters<double>(*b, targets({"gate_proj", "up_proj", "down_proj"}), 2, 4.0,
                            [&](const layer_info<double>& info) {
                              return std::static_pointer_cast<adapter<double>>(
                                  dora_lora<double>(info.in, info.out, lcfg(info.r, info.alpha, true, info.index),
                                                    info.base->weight.value()));
                            });
    randomize(*b, 2);
    auto c = make_llama();
    auto shared = std::make_shared<vera_shared<double>>(6, 16, 16, 7);
    inject_adapters<double>(*c, targets({"q_proj", "v_proj"}), 6, 0.0, [&](const layer_info<double>& info) {
      vera_config vc;
      vc.r = 6;
      return std::static_pointer_cast<adapter<double>>(std::make_shared<vera<double>>(info.in, info.out, shared, vc));
    });
    randomize(*c, 3);
    copies = {a, b, c};
    int k = 0;
    for (auto& m : copies)
      served.push_back(std::make_shared<const serve::served_adapter<double>>(
          serve::extract_served_adapter<double>(*m, "adapter" + std::to_string(k++))));
  }
  auto base = make_llama();
  const std::size_t n_params = base->num_parameters();
  const std::size_t seq = 5;
  const std::vector<std::int64_t> tokens{1, 7, 3, 9, 2, 4, 4, 8, 0, 39, 5, 6, 7, 8, 9, 11, 3, 2, 1, 0, 30, 31, 2, 5, 5};
  const std::size_t batch = tokens.size() / seq;
  const tensor<double> base_out = [&] {
    no_grad_guard ng;
    return base->forward(tokens, batch, seq).value();
  }();

  const auto paths = serve::install_mixed_linears<double>(*base);
  CHECK(paths.size() == 2 * 7);  // lm_head is not a target of all-linear
  CHECK(base->num_parameters() == n_params);  // base weights are shared, not copied

  serve::adapter_batch<double> b;
  // sequence -> adapter: 0, base, 2, 1, 0
  b.push(served[0]);
  b.push(nullptr);
  b.push(served[2]);
  b.push(served[1]);
  b.push(served[0]);
  CHECK(b.adapters().size() == 3);
  const tensor<double> out = serve::forward_with_adapters(*base, tokens, batch, seq, b);
  REQUIRE(out.shape() == base_out.shape());
  const std::vector<int> which{0, -1, 2, 1, 0};
  const std::size_t V = tiny_llama().vocab;
  for (std::size_t s = 0; s < batch; ++s) {
    INFO("sequence " << s << " adapter " << which[s]);
    const std::vector<std::int64_t> one(tokens.begin() + std::ptrdiff_t(s * seq),
                                        tokens.begin() + std::ptrdiff_t((s + 1) * seq));
    const tensor<double> ref =
        which[s] < 0 ? seq_logits(*base, one) : seq_logits(*copies[std::size_t(which[s])], one);
    const auto got = as_matrix(out).middleRows(Eigen::Index(s * seq), Eigen::Index(seq));
    const matrix<double> refm = as_matrix(ref, seq, V);
    CHECK(rel_err<double>(got, refm) < 1e-11);
    // The adapters really change the output (the test can fail).
    if (which[s] >= 0) {
      const auto bm = as_matrix(base_out).middleRows(Eigen::Index(s * seq), Eigen::Index(seq));
      CHECK(rel_err<double>(matrix<double>(bm), refm) > 1e-4);
    }
  }

  SECTION("no active batch: the model is the base model") {
    no_grad_guard ng;
    const tensor<double> again = base->forward(tokens, batch, seq).value();
    CHECK(rel_err<double>(as_matrix(again), as_matrix(base_out)) == 0.0);
  }
  SECTION("errors") {
    serve::adapter_batch<double> wrong;
    wrong.push(served[0]);
    CHECK_THROWS_AS(serve::forward_with_adapters(*base, tokens, batch, seq, wrong), shape_error);
    serve::adapter_batch<double> bad_id;
    for (int i = 0; i < 5; ++i) bad_id.push_id(i == 3 ? 5 : -1);
    CHECK_THROWS_WITH(serve::forward_with_adapters(*base, tokens, batch, seq, bad_id), Contains("adapter id 5"));
    // Recording a graph through the per-row path is refused.
    {
      serve::adapter_batch_scope<double> scope(b);
      CHECK_THROWS_WITH(base->forward(tokens, batch, seq), Contains("inference only"));
    }
    // An adapter layer with no mixed_linear in the model.
    serve::uninstall_mixed_linears(*base);
    serve::install_mixed_linears<double>(*base, target_modules::list({"q_proj"}));
    CHECK_THROWS_WITH(serve::forward_with_adapters(*base, tokens, batch, seq, b), Contains("k_proj"));
  }
  SECTION("uninstall restores plain Linear layers") {
    CHECK(serve::uninstall_mixed_linears(*base) == 14);
    CHECK(serve::mixed_linear_paths(*base).empty());
    no_grad_guard ng;
    CHECK(rel_err<double>(as_matrix(base->forward(tokens, batch, seq).value()), as_matrix(base_out)) == 0.0);
  }
}
