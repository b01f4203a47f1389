#include <catch2/catch.hpp>

#include <Eigen/QR>
#include <cmath>
#include <filesystem>
#include <string>
#include <vector>

#include <unistd.h>

#include "peft/adapters/inject.hpp"
#include "peft/io/peft_dir.hpp"
#include "peft/io/state_dict.hpp"
#include "peft/merge/extract.hpp"
#include "peft/nn/linear.hpp"
#include "../support/temp_dir.hpp"
#include "../support/toy_model.hpp"

using namespace peft;
using merge::extract_options;
using Catch::Matchers::WithinAbs;
using Catch::Matchers::WithinRel;

namespace {
// The toy model without its classifier.
template <class T>
struct toy : test::toy<T> {
  toy() : test::toy<T>(1, false) {}
};
using test::temp_dir;
using M = matrix<double>;

template <class T>
matrix<T> dense(const merge::lora_pair<T>& p) {
  return p.scale * (as_matrix(p.B) * as_matrix(p.A));
}
template <class A, class B>
double max_diff(const A& a, const B& b) {
  REQUIRE(a.rows() == b.rows());
  REQUIRE(a.cols() == b.cols());
  return (a.template cast<double>() - b.template cast<double>()).cwiseAbs().maxCoeff();
}
extract_options by_rank(std::size_t r) {
  extract_options o;
  o.rank = r;
  return o;
}
extract_options by_energy(double e) {
  extract_options o;
  o.energy = e;
  return o;
}
M gaussian(Eigen::Index r, Eigen::Index c, rng& g) {
  M m(r, c);
  for (Eigen::Index i = 0; i < m.size(); ++i) m.data()[i] = g.normal();
  return m;
}
// Orthonormal columns [n, k] (QR of a Gaussian matrix).
M orthonormal(Eigen::Index n, Eigen::Index k, rng& g) {
  Eigen::HouseholderQR<M> qr(gaussian(n, k, g));
  return qr.householderQ() * M::Identity(n, k);
}
}  // namespace

TEST_CASE("extract: an exact rank-r difference is recovered with energy 1", "[merge][extract]") {
  rng g(1);
  const M base = gaussian(7, 6, g);
  const M diff = gaussian(7, 3, g) * gaussian(3, 6, g);  // rank 3
  const M ft = base + diff;
  for (const auto& o : {by_rank(3), by_energy(1.0), by_energy(0.999999)}) {
    const auto ex = merge::extract<double>(ft, base, o);
    CHECK(ex.rank == 3);
    CHECK_THAT(ex.captured_energy, WithinAbs(1.0, 1e-12));
    CHECK(ex.lora.A.shape() == std::vector<std::size_t>{3, 6});
    CHECK(ex.lora.B.shape() == std::vector<std::size_t>{7, 3});
    CHECK(ex.lora.scale == 1.0);  // alpha 0: alpha = rank
    CHECK(max_diff(dense(ex.lora), diff) < 1e-12 * diff.norm());
  }
}

TEST_CASE("extract: captured energy and rank from a known spectrum", "[merge][extract]") {
  // D = U·diag(4,3,2,1)·Vᵀ: energies 16, 9, 4, 1 of 30.
  rng g(2);
  const M U = orthonormal(6, 4, g), V = orthonormal(5, 4, g);
  const Eigen::Vector4d s(4, 3, 2, 1);
  const M D = U * s.asDiagonal() * V.transpose();
  const M base = gaussian(6, 5, g);
  struct row {
    double energy;
    std::size_t rank;
    double captured;
  };
  for (auto [e, rank, captured] : {row{0.5, 1, 16 / 30.}, row{0.8, 2, 25 / 30.}, row{0.84, 3, 29 / 30.},
                                   row{0.95, 3, 29 / 30.}, row{0.97, 4, 1.0}, row{1.0, 4, 1.0}}) {
    INFO("energy " << e);
    const auto ex = merge::extract<double>(base + D, base, by_energy(e));
    CHECK(ex.rank == rank);
    CHECK_THAT(ex.captured_energy, WithinRel(captured, 1e-12));
  }
  // Rank mode: the best rank-2 approximation, U_2·diag(4,3)·V_2ᵀ.
  const auto ex = merge::extract<double>(base + D, base, by_rank(2));
  CHECK_THAT(ex.captured_energy, WithinRel(25 / 30., 1e-12));
  const M best2 = U.leftCols(2) * s.head(2).asDiagonal() * V.leftCols(2).transpose();
  CHECK(max_diff(dense(ex.lora), best2) < 1e-12);
  // Balanced factors: column i of B and row i of A both have norm sqrt(S_i / scale).
  CHECK_THAT(as_matrix(ex.lora.B).col(0).norm(), WithinRel(2.0, 1e-12));
  CHECK_THAT(as_matrix(ex.lora.A).row(1).norm(), WithinRel(std::sqrt(3.0), 1e-12));
  // alpha sets scale = alpha / rank and the factors absorb 1 / scale.
  extract_options o = by_rank(2);
  o.alpha = 16;
  const auto ea = merge::extract<double>(base + D, base, o);
  CHECK(ea.lora.scale == 8.0);
  CHECK(max_diff(dense(ea.lora), best2) < 1e-12);
  CHECK_THAT(as_matrix(ea.lora.B).col(0).norm(), WithinRel(std::sqrt(4.0 / 8.0), 1e-12));
  // A rank beyond min(out, in) is capped there, where the factorization is exact.
  const auto big = merge::extract<double>(base + D, base, by_rank(9));
  CHECK(big.rank == 5);
  CHECK(max_diff(dense(big.lora), D) < 1e-12);
}

TEST_CASE("extract: randomized SVD recovers a low-rank difference and is seeded", "[merge][extract]") {
  rng g(3);
  const M base = gaussian(40, 30, g);
  const M diff = gaussian(40, 4, g) * gaussian(4, 30, g);
  extract_options o = by_rank(4);
  o.randomized = true;
  o.seed = 12;
  const auto a = merge::extract<double>(base + diff, base, o);
  CHECK(a.rank == 4);
  CHECK_THAT(a.captured_energy, WithinAbs(1.0, 1e-10));
  CHECK(max_diff(dense(a.lora), diff) < 1e-9 * diff.norm());
  const auto b = merge::extract<double>(base + diff, base, o);
  CHECK(max_diff(as_matrix(a.lora.A), as_matrix(b.lora.A)) == 0.0);
}

TEST_CASE("extract: float weights and a zero difference", "[merge][extract]") {
  rng g(4);
  const matrix<float> base = gaussian(5, 4, g).cast<float>();
  const matrix<float> diff = (gaussian(5, 1, g) * gaussian(1, 4, g)).cast<float>();
  const auto ex = merge::extract<float>(base + diff, base, by_energy(0.99));
  CHECK(ex.rank == 1);
  CHECK(max_diff(dense(ex.lora), diff) < 1e-5 * diff.norm());
  // No difference: energy 1 by definition, factors zero.
  const auto z = merge::extract<float>(base, base, by_rank(2));
  CHECK(z.captured_energy == 1.0);
  CHECK(dense(z.lora).isZero(0));
  CHECK(merge::extract<float>(base, base, by_energy(0.5)).rank == 1);
}

TEST_CASE("extract: bad input throws naming the op and the shapes", "[merge][extract]") {
  const M a = M::Ones(4, 5), b = M::Ones(4, 6);
  CHECK_THROWS_WITH(merge::extract<double>(a, b, by_rank(1)),
                    Catch::Contains("shape_error") && Catch::Contains("extract") && Catch::Contains("[4,5]") &&
                        Catch::Contains("[4,6]"));
  extract_options both = by_rank(2);
  both.energy = 0.9;
  CHECK_THROWS_WITH(merge::extract<double>(a, a, both), Catch::Contains("exactly one of rank"));
  CHECK_THROWS_WITH(merge::extract<double>(a, a, extract_options{}), Catch::Contains("exactly one of rank"));
  CHECK_THROWS_WITH(merge::extract<double>(a, a, by_energy(1.5)), Catch::Contains("energy 1.5 outside (0, 1]"));
  CHECK_THROWS_AS(merge::extract<double>(a, a, by_energy(-0.5)), value_error);
  extract_options ra = by_energy(0.9);
  ra.randomized = true;
  CHECK_THROWS_WITH(merge::extract<double>(a, a, ra), Catch::Contains("randomized"));
  extract_options neg = by_rank(1);
  neg.alpha = -1;
  CHECK_THROWS_AS(merge::extract<double>(a, a, neg), value_error);
}

// ---- safetensors -> PEFT adapter directory ----

namespace {


std::map<std::string, M> loaded_deltas(const std::string& dir, io::peft_load_result* res = nullptr) {
  toy<double> m;
  auto r = io::load_peft_adapter(dir, m);
  if (res) *res = r;
  std::map<std::string, M> out;
  for (auto& [path, al] : adapted_layers(m))
    out[path] = al->get_adapter().delta_weight(as_matrix(al->base_layer->weight.value()));
  return out;
}

// base.safetensors and ft.safetensors of the toy model: ft changes encoder.q_proj by a rank-2
// and decoder.v_proj by a rank-1 difference, and a bias (1-D, never extracted).
struct model_pair {
  temp_dir files;
  M d_enc_q, d_dec_v;
  model_pair() {
    toy<double> m;
    io::save_state_dict(files / "base.safetensors", m, io::dtype::F64);
    rng g(8);
    d_enc_q = gaussian(5, 2, g) * gaussian(2, 6, g);
    d_dec_v = gaussian(5, 1, g) * gaussian(1, 7, g);
    auto lin = [&](const std::string& path) -> nn::linear<double>& {
      return dynamic_cast<nn::linear<double>&>(*m.find_module(path));
    };
    as_matrix(lin("encoder.q_proj").weight.value()) += d_enc_q;
    as_matrix(lin("decoder.v_proj").weight.value()) += d_dec_v;
    as_vector(lin("decoder.q_proj").bias.value()).array() += 1.0;
    io::save_state_dict(files / "ft.safetensors", m, io::dtype::F64);
  }
  std::string base() const { return files / "base.safetensors"; }
  std::string ft() const { return files / "ft.safetensors"; }
};
}  // namespace

TEST_CASE("extract_peft_dir: the weights that differ become a PEFT directory that peft_dir loads",
          "[merge][extract][io]") {
  model_pair mp;
  temp_dir out;
  const auto rep = merge::extract_peft_dir(mp.base(), mp.ft(), by_rank(2), out.str());
  REQUIRE(rep.size() == 2);
  CHECK(rep[0].name == "decoder.v_proj");
  CHECK(rep[0].rank == 2);
  CHECK_THAT(rep[0].captured_energy, WithinAbs(1.0, 1e-12));
  CHECK(rep[1].name == "encoder.q_proj");
  CHECK(rep[1].rank == 2);
  io::peft_load_result res;
  const auto got = loaded_deltas(out.str(), &res);
  CHECK(res.config.r == 2);
  CHECK(res.config.lora_alpha == 2);
  CHECK(std::get<std::vector<std::string>>(res.config.target_modules) ==
        std::vector<std::string>{"decoder.v_proj", "encoder.q_proj"});
  REQUIRE(got.size() == 2);
  CHECK(max_diff(got.at("encoder.q_proj"), mp.d_enc_q) < 1e-6 * mp.d_enc_q.norm());  // F32 factors
  CHECK(max_diff(got.at("decoder.v_proj"), mp.d_dec_v) < 1e-6 * mp.d_dec_v.norm());
  CHECK(io::safetensors_file::load(out / "adapter_model.safetensors")
            .at("base_model.model.encoder.q_proj.lora_B.weight")
            .shape == shape_t{5, 2});
  std::size_t files = 0;  // written atomically: no temporaries left
  for (auto& e : std::filesystem::directory_iterator(out.path)) {
    (void)e;
    ++files;
  }
  CHECK(files == 2);
}

TEST_CASE("extract_peft_dir: energy mode gives per-layer ranks through rank_pattern", "[merge][extract][io]") {
  model_pair mp;
  temp_dir out;
  extract_options o = by_energy(0.999);
  o.alpha = 8;
  const auto rep = merge::extract_peft_dir(mp.base(), mp.ft(), o, out.str());
  REQUIRE(rep.size() == 2);
  CHECK(rep[0].rank == 1);  // decoder.v_proj
  CHECK(rep[1].rank == 2);  // encoder.q_proj
  io::peft_load_result res;
  const auto got = loaded_deltas(out.str(), &res);
  CHECK(res.config.lora_alpha == 8);
  CHECK(res.config.alpha_pattern.empty());
  CHECK(res.config.r == 1);  // ranks 1 and 2 once each: the tie goes to the smaller
  CHECK(res.config.rank_pattern == std::map<std::string, std::size_t>{{"encoder\\.q_proj", 2}});
  CHECK(max_diff(got.at("encoder.q_proj"), mp.d_enc_q) < 1e-6 * mp.d_enc_q.norm());
  CHECK(max_diff(got.at("decoder.v_proj"), mp.d_dec_v) < 1e-6 * mp.d_dec_v.norm());
}

TEST_CASE("extract_peft_dir: targets select layers, identical ones included", "[merge][extract][io]") {
  model_pair mp;
  temp_dir out;
  extract_options o = by_rank(1);
  o.targets = {"q_proj"};
  const auto rep = merge::extract_peft_dir(mp.base(), mp.ft(), o, out.str());
  REQUIRE(rep.size() == 2);
  CHECK(rep[0].name == "decoder.q_proj");  // unchanged weight: a zero adapter, energy 1
  CHECK(rep[0].captured_energy == 1.0);
  CHECK(rep[1].name == "encoder.q_proj");
  CHECK_THAT(rep[1].captured_energy, WithinAbs(1.0, 0.3));
  CHECK(rep[1].captured_energy < 1.0 - 1e-6);  // rank 1 of a rank-2 difference
  const auto got = loaded_deltas(out.str());
  CHECK(got.at("decoder.q_proj").isZero(0));
}

TEST_CASE("extract_peft_dir: embedding tables are skipped unless targeted; bad input throws naming the file",
          "[merge][extract][io]") {
  temp_dir t, out;
  rng g(6);
  io::safetensors_file a, b;
  const tensor<double> emb = randn<double>({10, 4}, g), proj = randn<double>({3, 4}, g);
  a.add("model.embed_tokens.weight", emb);
  a.add("model.proj.weight", proj);
  b.add("model.embed_tokens.weight", tensor<double>(emb + 1.0));
  b.add("model.proj.weight", tensor<double>(proj * 2.0));
  a.save(t / "a.safetensors");
  b.save(t / "b.safetensors");
  auto rep = merge::extract_peft_dir(t / "a.safetensors", t / "b.safetensors", by_rank(1), out.str());
  REQUIRE(rep.size() == 1);
  CHECK(rep[0].name == "model.proj");
  extract_options o = by_rank(1);
  o.targets = {"embed_tokens"};
  rep = merge::extract_peft_dir(t / "a.safetensors", t / "b.safetensors", o, out.str());
  CHECK(rep[0].name == "model.embed_tokens");

  o.targets = {"k_proj"};
  CHECK_THROWS_WITH(merge::extract_peft_dir(t / "a.safetensors", t / "b.safetensors", o, out.str()),
                    Catch::Contains("target 'k_proj'") && Catch::Contains("a.safetensors"));
  CHECK_THROWS_WITH(merge::extract_peft_dir(t / "a.safetensors", t / "a.safetensors", by_rank(1), out.str()),
                    Catch::Contains("no 2-D weight differs"));
  io::safetensors_file c;
  c.add("model.embed_tokens.weight", emb);
  c.add("model.proj.weight", randn<double>({3, 5}, g));
  c.save(t / "c.safetensors");
  CHECK_THROWS_WITH(merge::extract_peft_dir(t / "a.safetensors", t / "c.safetensors", by_rank(1), out.str()),
                    Catch::Contains("'model.proj.weight'") && Catch::Contains("[3,4]") && Catch::Contains("[3,5]") &&
                        Catch::Contains("c.safetensors"));
  CHECK_THROWS_WITH(merge::extract_peft_dir(t / "a.safetensors", t / "missing.safetensors", by_rank(1), out.str()),
                    Catch::Contains("io_error") && Catch::Contains("missing.safetensors"));
  CHECK_THROWS_AS(merge::extract_peft_dir(t / "a.safetensors", t / "b.safetensors", extract_options{}, out.str()),
                  value_error);
}
