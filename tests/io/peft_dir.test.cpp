#include <catch2/catch.hpp>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <set>
#include <string>

#include <unistd.h>

#include "peft/adapters/dora.hpp"
#include "peft/adapters/inject.hpp"
#include "peft/adapters/vera.hpp"
#include "peft/io/peft_dir.hpp"
#include "peft/nn/linear.hpp"
#include "../support/temp_dir.hpp"
#include "../support/toy_model.hpp"
#include "../support/thrown.hpp"

using namespace peft;
using io::adapter_config;

namespace {
using test::block;
using test::toy;
// Not created: saving must create the adapter directory itself.
struct temp_dir : test::temp_dir {
  temp_dir() : test::temp_dir(false) {}
};

// Full initialisation of the option structs (no -Wmissing-field-initializers).
inject_options targets(target_modules t) {
  inject_options o;
  o.targets = std::move(t);
  return o;
}
lora_config lcfg(std::size_t r, double alpha) {
  lora_config c;
  c.r = r;
  c.alpha = alpha;
  return c;
}


// Gives every adapter parameter (and the classifier) non-trivial values, so a round trip that
// loses or swaps anything shows.
template <class T>
void randomize_adapters(nn::module<T>& m, std::uint64_t seed) {
  rng g(seed);
  for (auto& [name, v] : m.named_parameters())
    if (name.find("lora_") != std::string::npos || name.find("vera_lambda") != std::string::npos)
      fill_normal(v.value(), 0.5, 0.5, g);
}

template <class T>
tensor<T> run(nn::unary_module<T>& m) {
  rng g(42);
  m.eval();
  no_grad_guard ng;
  return m.forward(constant<T>(randn<T>({3, 6}, g))).value();
}

template <class T>
bool bitwise_equal(const tensor<T>& a, const tensor<T>& b) {
  return shape_of(a) == shape_of(b) && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

using test::thrown_message;

std::set<std::string> file_keys(const std::string& dir) {
  const auto f = io::safetensors_file::load(dir + "/adapter_model.safetensors");
  const auto n = f.names();
  return {n.begin(), n.end()};
}

template <class T>
std::shared_ptr<vera_shared<T>> inject_vera_for_test(toy<T>& m, std::size_t r, std::uint64_t key, bool save_projection) {
  const inject_options opt = targets(target_modules::list({"q_proj", "v_proj"}));
  std::vector<shape_t> shapes;
  for (auto& [path, mod] : m.named_modules()) {
    auto* lin = dynamic_cast<nn::linear<T>*>(mod);
    if (lin && is_target<T>(path, opt.targets, opt)) shapes.push_back(shape_of(lin->weight.value()));
  }
  auto shared = std::make_shared<vera_shared<T>>(r, shapes, key);
  vera_config vc;
  vc.r = r;
  vc.projection_prng_key = key;
  vc.save_projection = save_projection;
  inject_adapters<T>(m, opt, r, 0.0, [&](const layer_info<T>& info) {
    return std::static_pointer_cast<adapter<T>>(std::make_shared<vera<T>>(info.in, info.out, shared, vc));
  });
  return shared;
}
}  // namespace

TEST_CASE("LoRA directory round-trips bitwise with PEFT's keys, ranks and alphas", "[io][peft_dir]") {
  toy<float> m;
  lora_config lc;
  lc.r = 2;
  lc.alpha = 4;
  lc.seed = 3;
  inject_options opt = targets(target_modules::list({"q_proj", "v_proj"}));
  opt.rank_pattern["decoder.q_proj"] = 3;
  opt.alpha_pattern["decoder.v_proj"] = 6;
  inject_lora<float>(m, lc, opt);
  randomize_adapters(m, 7);

  auto cfg = io::make_adapter_config(m);
  cfg.base_model_name_or_path = "toy";
  CHECK(cfg.r == 2);
  CHECK(cfg.lora_alpha == 4);
  CHECK(cfg.rank_pattern == std::map<std::string, std::size_t>{{"decoder\\.q_proj", 3}});
  CHECK(cfg.alpha_pattern == std::map<std::string, double>{{"decoder\\.v_proj", 6.0}});
  temp_dir dir;
  io::save_peft_adapter(dir.str(), m, cfg);

  CHECK(file_keys(dir.str()) == std::set<std::string>{
                                    "base_model.model.decoder.q_proj.lora_A.weight",
                                    "base_model.model.decoder.q_proj.lora_B.weight",
                                    "base_model.model.decoder.v_proj.lora_A.weight",
                                    "base_model.model.decoder.v_proj.lora_B.weight",
                                    "base_model.model.encoder.q_proj.lora_A.weight",
                                    "base_model.model.encoder.q_proj.lora_B.weight",
                                    "base_model.model.encoder.v_proj.lora_A.weight",
                                    "base_model.model.encoder.v_proj.lora_B.weight"});
  const auto st = io::safetensors_file::load(dir / "adapter_model.safetensors");
  CHECK(st.at("base_model.model.decoder.q_proj.lora_A.weight").shape == shape_t{3, 4});  // [r, in]
  CHECK(st.at("base_model.model.decoder.q_proj.lora_B.weight").shape == shape_t{7, 3});  // [out, r]
  CHECK(st.at("base_model.model.encoder.v_proj.lora_A.weight").type == io::dtype::F32);
  CHECK(st.metadata() == std::map<std::string, std::string>{{"format", "pt"}});
  const auto written = adapter_config::load(dir / "adapter_config.json");
  CHECK(written.inference_mode);  // as save_pretrained writes it
  CHECK(written.peft_type == "LORA");
  CHECK(written.base_model_name_or_path == "toy");

  toy<float> m2;  // same base weights (seed 1), no adapters yet
  const auto res = io::load_peft_adapter(dir.str(), m2);
  CHECK(res.injected);
  CHECK(res.layers == std::vector<std::string>{"encoder.q_proj", "encoder.v_proj", "decoder.q_proj", "decoder.v_proj"});
  const auto a = io::peft_state_dict(m, cfg), b = io::peft_state_dict(m2, res.config);
  REQUIRE(a.size() == b.size());
  for (auto& [k, t] : a) {
    INFO(k);
    CHECK(bitwise_equal(t, b.at(k)));
  }
  CHECK(bitwise_equal(run(m), run(m2)));
  // Adapters train, the base stays frozen, as after injection.
  for (auto& [name, v] : m2.named_parameters())
    CHECK(v.requires_grad() == (name.find("lora_") != std::string::npos));
}

TEST_CASE("rsLoRA from a hand-written config round-trips and keeps use_rslora", "[io][peft_dir]") {
  toy<double> m;
  lora_config lc;
  lc.r = 4;
  lc.alpha = 8;
  lc.use_rslora = true;
  inject_lora<double>(m, lc, targets(target_modules::pattern(".*\\.q_proj")));
  randomize_adapters(m, 2);
  auto cfg = adapter_config::lora();
  cfg.r = 4;
  cfg.lora_alpha = 8;
  cfg.use_rslora = true;
  cfg.target_modules = std::string(".*\\.q_proj");
  temp_dir dir;
  io::save_peft_adapter(dir.str(), m, cfg, io::dtype::F64);
  CHECK(io::safetensors_file::load(dir / "adapter_model.safetensors").at(
            "base_model.model.encoder.q_proj.lora_A.weight").type == io::dtype::F64);
  toy<double> m2;
  const auto res = io::load_peft_adapter(dir.str(), m2);
  CHECK(res.config.use_rslora);
  auto& l = dynamic_cast<lora<double>&>(dynamic_cast<adapted_linear<double>&>(*m2.find_module("encoder.q_proj")).get_adapter());
  CHECK(l.scaling() == 8.0 / 2.0);  // alpha / sqrt(r)
  CHECK(bitwise_equal(run(m), run(m2)));
  // The plain-LoRA reading of the same file would differ: the flag matters.
  auto plain = res.config;
  plain.use_rslora = false;
  CHECK_THROWS_WITH(io::peft_state_dict(m2, plain), Catch::Contains("use_rslora = true"));
}

TEST_CASE("DoRA directory saves lora_magnitude_vector without .weight and round-trips", "[io][peft_dir]") {
  toy<float> m;
  const inject_options opt = targets(target_modules::list({"q_proj", "v_proj"}));
  lora_config lc;
  lc.r = 2;
  lc.alpha = 3;
  inject_adapters<float>(m, opt, lc.r, lc.alpha, [&](const layer_info<float>& info) {
    return std::static_pointer_cast<adapter<float>>(dora_lora<float>(info.in, info.out, lc, info.base->weight.value()));
  });
  randomize_adapters(m, 4);  // lora_A, lora_B and lora_magnitude_vector
  const auto cfg = io::make_adapter_config(m);
  CHECK(cfg.use_dora);
  temp_dir dir;
  io::save_peft_adapter(dir.str(), m, cfg);
  const auto keys = file_keys(dir.str());
  CHECK(keys.count("base_model.model.encoder.q_proj.lora_magnitude_vector"));
  CHECK_FALSE(keys.count("base_model.model.encoder.q_proj.lora_magnitude_vector.weight"));
  CHECK(keys.size() == 12);
  CHECK(io::safetensors_file::load(dir / "adapter_model.safetensors")
            .at("base_model.model.decoder.q_proj.lora_magnitude_vector")
            .shape == shape_t{7});
  toy<float> m2;
  const auto res = io::load_peft_adapter(dir.str(), m2);
  CHECK(res.config.use_dora);
  CHECK(dynamic_cast<dora<float>*>(&dynamic_cast<adapted_linear<float>&>(*m2.find_module("decoder.v_proj")).get_adapter()));
  const auto a = io::peft_state_dict(m, cfg), b = io::peft_state_dict(m2, res.config);
  for (auto& [k, t] : a) CHECK(bitwise_equal(t, b.at(k)));
  CHECK(bitwise_equal(run(m), run(m2)));
}

TEST_CASE("VeRA directory saves the shared projections once and round-trips", "[io][peft_dir]") {
  toy<float> m;
  auto shared = inject_vera_for_test(m, 3, 11, true);
  randomize_adapters(m, 5);
  const auto cfg = io::make_adapter_config(m);
  CHECK(cfg.is_vera());
  CHECK(cfg.r == 3);
  CHECK(cfg.projection_prng_key == 11);
  temp_dir dir;
  io::save_peft_adapter(dir.str(), m, cfg);
  const auto st = io::safetensors_file::load(dir / "adapter_model.safetensors");
  CHECK(st.size() == 2 * 4 + 2);
  CHECK(st.at("base_model.vera_A").shape == shape_t{3, 7});  // [r, max in]
  CHECK(st.at("base_model.vera_B").shape == shape_t{7, 3});  // [max out, r]
  CHECK(st.at("base_model.model.decoder.q_proj.vera_lambda_b").shape == shape_t{7});
  CHECK(st.at("base_model.model.decoder.q_proj.vera_lambda_d").shape == shape_t{3});
  CHECK(bitwise_equal(st.get<float>("base_model.vera_A"), shared->vera_A()));

  toy<float> m2;
  const auto res = io::load_peft_adapter(dir.str(), m2);
  CHECK(res.config.is_vera());
  CHECK(bitwise_equal(run(m), run(m2)));
  auto& v2 = dynamic_cast<vera<float>&>(dynamic_cast<adapted_linear<float>&>(*m2.find_module("encoder.q_proj")).get_adapter());
  CHECK(bitwise_equal(v2.shared()->vera_B(), shared->vera_B()));
  CHECK_FALSE(v2.shared()->generated_from_key());  // loaded, not regenerated
}

TEST_CASE("VeRA without saved projections regenerates them from projection_prng_key", "[io][peft_dir]") {
  toy<float> m;
  inject_vera_for_test(m, 4, 99, false);
  randomize_adapters(m, 6);
  const auto cfg = io::make_adapter_config(m);
  CHECK_FALSE(cfg.save_projection);
  temp_dir dir;
  io::save_peft_adapter(dir.str(), m, cfg);
  const auto keys = file_keys(dir.str());
  CHECK_FALSE(keys.count("base_model.vera_A"));
  CHECK(keys.size() == 8);
  toy<float> m2;
  io::load_peft_adapter(dir.str(), m2);
  CHECK(bitwise_equal(run(m), run(m2)));
}

TEST_CASE("modules_to_save are saved under the module's own keys and restored", "[io][peft_dir]") {
  toy<float> m;
  inject_options opt = targets(target_modules::list({"encoder.q_proj"}));
  opt.modules_to_save = {"classifier"};
  inject_lora<float>(m, lora_config{}, opt);
  randomize_adapters(m, 8);
  rng g(3);
  for (auto& [n, v] : m.classifier->named_parameters()) fill_normal(v.value(), 0.0, 1.0, g);
  auto cfg = io::make_adapter_config(m);
  cfg.modules_to_save = std::vector<std::string>{"classifier"};
  temp_dir dir;
  io::save_peft_adapter(dir.str(), m, cfg, io::dtype::F32);
  CHECK(file_keys(dir.str()) == std::set<std::string>{"base_model.model.classifier.bias",
                                                       "base_model.model.classifier.weight",
                                                       "base_model.model.encoder.q_proj.lora_A.weight",
                                                       "base_model.model.encoder.q_proj.lora_B.weight"});
  toy<float> m2;
  io::load_peft_adapter(dir.str(), m2);
  CHECK(bitwise_equal(m2.classifier->named_parameters()[0].second.value(),
                      m.classifier->named_parameters()[0].second.value()));
  CHECK(bitwise_equal(run(m), run(m2)));
  for (auto& [n, v] : m2.classifier->named_parameters()) CHECK(v.requires_grad());
}

TEST_CASE("F16 and BF16 adapter files load as the rounded values", "[io][peft_dir]") {
  for (auto type : {io::dtype::F16, io::dtype::BF16}) {
    toy<float> m;
    inject_lora<float>(m, lora_config{}, targets(target_modules::list({"q_proj"})));
    randomize_adapters(m, 1);
    const auto cfg = io::make_adapter_config(m);
    temp_dir dir;
    io::save_peft_adapter(dir.str(), m, cfg, type);
    toy<float> m2;
    io::load_peft_adapter(dir.str(), m2);
    const auto a = io::peft_state_dict(m, cfg), b = io::peft_state_dict(m2, cfg);
    for (auto& [k, t] : a)
      for (std::size_t i = 0; i < t.size(); ++i) {
        const float x = t.data()[i];
        const float want = type == io::dtype::F16
                               ? peft::detail::half_to_float(peft::detail::float_to_half(x))
                               : peft::detail::bf16_to_float(peft::detail::float_to_bf16(x));
        REQUIRE(b.at(k).data()[i] == want);
      }
  }
}

TEST_CASE("a directory written by hand in PEFT's layout computes W x + (alpha / r) B A x", "[io][peft_dir]") {
  temp_dir dir;
  std::filesystem::create_directories(dir.path);
  {
    std::ofstream f(dir / "adapter_config.json");
    f << R"({
  "base_model_name_or_path": "toy",
  "bias": "none",
  "fan_in_fan_out": false,
  "inference_mode": true,
  "init_lora_weights": true,
  "layers_pattern": null,
  "layers_to_transform": null,
  "lora_alpha": 16,
  "lora_dropout": 0.0,
  "modules_to_save": null,
  "peft_type": "LORA",
  "r": 2,
  "rank_pattern": {},
  "alpha_pattern": {},
  "revision": null,
  "target_modules": ["encoder.q_proj"],
  "task_type": null,
  "use_dora": false,
  "use_rslora": false
})";
  }
  std::vector<float> A(12), B(10);
  for (int i = 0; i < 12; ++i) A[std::size_t(i)] = 0.1f * float(i - 6);
  for (int i = 0; i < 10; ++i) B[std::size_t(i)] = 0.05f * float(i + 1);
  io::safetensors_file st;
  st.add("base_model.model.encoder.q_proj.lora_A.weight", make_tensor<float>({2, 6}, A), io::dtype::BF16);
  st.add("base_model.model.encoder.q_proj.lora_B.weight", make_tensor<float>({5, 2}, B), io::dtype::F16);
  st.metadata()["format"] = "pt";
  st.save(dir / "adapter_model.safetensors");

  toy<double> m;
  io::peft_load_options frozen;
  frozen.trainable = false;
  io::load_peft_adapter(dir.str(), m, frozen);
  for (auto& [n, v] : m.named_parameters()) CHECK_FALSE(v.requires_grad());  // trainable = false
  auto& layer = dynamic_cast<adapted_linear<double>&>(*m.find_module("encoder.q_proj"));
  rng g(1);
  auto x = constant<double>(randn<double>({4, 6}, g));
  const auto y = layer.forward(x).value();
  matrix<double> Am(2, 6), Bm(5, 2);
  for (int i = 0; i < 12; ++i) Am.data()[i] = double(peft::detail::bf16_to_float(peft::detail::float_to_bf16(A[std::size_t(i)])));
  for (int i = 0; i < 10; ++i) Bm.data()[i] = double(peft::detail::half_to_float(peft::detail::float_to_half(B[std::size_t(i)])));
  const matrix<double> W = as_matrix(layer.base_layer->weight.value());
  matrix<double> ref = as_matrix(x.value()) * (W + (16.0 / 2.0) * Bm * Am).transpose();
  ref.rowwise() += as_vector(layer.base_layer->bias.value()).transpose();
  CHECK((as_matrix(y) - ref).cwiseAbs().maxCoeff() < 1e-12);
}

TEST_CASE("bad tensors are io_errors naming them, and a failed load leaves the model untouched", "[io][peft_dir]") {
  toy<float> m;
  inject_lora<float>(m, lcfg(2, 4), targets(target_modules::list({"q_proj"})));
  randomize_adapters(m, 9);
  const auto cfg = io::make_adapter_config(m);
  temp_dir dir;
  io::save_peft_adapter(dir.str(), m, cfg);
  const std::string st_path = dir / "adapter_model.safetensors";
  const auto good = io::safetensors_file::load(st_path);
  const std::string key = "base_model.model.decoder.q_proj.lora_A.weight";

  auto expect_failure = [&](const io::safetensors_file& f, std::vector<std::string> phrases) {
    f.save(st_path);
    toy<float> fresh;
    const auto before = fresh.get_state_dict();
    const std::string msg = thrown_message([&] { io::load_peft_adapter(dir.str(), fresh); });
    INFO(msg);
    CHECK_THAT(msg, Catch::StartsWith("peft::io_error"));
    for (auto& p : phrases) CHECK_THAT(msg, Catch::Contains(p));
    CHECK(adapted_layers(fresh).empty());  // injection rolled back
    CHECK((fresh.get_state_dict() == before));
    for (auto& [n, v] : fresh.named_parameters()) CHECK(v.requires_grad());
  };
  {
    auto f = good;
    f.erase(key);
    f.add(key, zeros<float>({3, 4}));
    expect_failure(f, {key, "has shape [3,4]", "expects [2,4]"});
  }
  {
    auto f = good;
    f.erase(key);
    expect_failure(f, {"missing tensor '" + key + "'"});
  }
  {
    auto f = good;
    f.add("base_model.model.decoder.q_proj.lora_C.weight", zeros<float>({1}));
    expect_failure(f, {"unexpected tensor 'base_model.model.decoder.q_proj.lora_C.weight'"});
  }
  {
    auto f = good;
    f.erase(key);
    f.add(key, io::dtype::F8_E4M3, {2, 4}, std::vector<std::uint8_t>(8));
    expect_failure(f, {key, "cannot convert F8_E4M3"});
  }
  good.save(st_path);

  // Config problems.
  auto write_cfg = [&](adapter_config c) { c.save(dir / "adapter_config.json"); };
  auto c = cfg;
  c.target_modules = std::vector<std::string>{"nope"};
  write_cfg(c);
  toy<float> t1;
  CHECK_THAT(thrown_message([&] { io::load_peft_adapter(dir.str(), t1); }),
             Catch::Contains("cannot build the adapters") && Catch::Contains("nope"));
  c = cfg;
  c.fan_in_fan_out = true;
  write_cfg(c);
  CHECK_THAT(thrown_message([&] { io::load_peft_adapter(dir.str(), t1); }), Catch::Contains("fan_in_fan_out"));
  c = cfg;
  c.extra["layers_to_transform"] = {0, 1};
  write_cfg(c);
  CHECK_THAT(thrown_message([&] { io::load_peft_adapter(dir.str(), t1); }),
             Catch::Contains("layers_to_transform = [0,1] is not supported"));
  c = cfg;
  c.r = 3;  // the file's tensors are rank 2
  write_cfg(c);
  CHECK_THAT(thrown_message([&] { io::load_peft_adapter(dir.str(), t1); }),
             Catch::Contains("has shape [2,6]") && Catch::Contains("expects [3,6]"));
  CHECK(adapted_layers(t1).empty());
  write_cfg(cfg);
  CHECK_THAT(thrown_message([&] { io::load_peft_adapter(dir.str() + "/missing", t1); }),
             Catch::Contains("missing/adapter_config.json"));
}

TEST_CASE("loading into an injected model checks it against the config and keeps its parameters",
          "[io][peft_dir]") {
  toy<float> m;
  inject_lora<float>(m, lcfg(2, 4), targets(target_modules::list({"q_proj"})));
  randomize_adapters(m, 10);
  const auto cfg = io::make_adapter_config(m);
  temp_dir dir;
  io::save_peft_adapter(dir.str(), m, cfg);

  toy<float> m2;
  lora_config other = lcfg(2, 4);
  other.seed = 77;
  inject_lora<float>(m2, other, targets(target_modules::list({"q_proj"})));
  node<float>* before = m2.named_parameters()[0].second.get();
  const auto res = io::load_peft_adapter(dir.str(), m2);
  CHECK_FALSE(res.injected);
  CHECK(m2.named_parameters()[0].second.get() == before);  // same nodes (optimizer handles stay valid)
  CHECK(bitwise_equal(run(m), run(m2)));

  toy<float> m3;  // wrong rank
  inject_lora<float>(m3, lcfg(3, 4), targets(target_modules::list({"q_proj"})));
  CHECK_THAT(thrown_message([&] { io::load_peft_adapter(dir.str(), m3); }),
             Catch::Contains("does not match the config") && Catch::Contains("r = 3"));
  toy<float> m4;  // more layers than the config targets
  inject_lora<float>(m4, lcfg(2, 4), targets(target_modules::list({"q_proj", "v_proj"})));
  CHECK_THAT(thrown_message([&] { io::load_peft_adapter(dir.str(), m4); }),
             Catch::Contains("'encoder.v_proj' is adapted but target_modules does not select it"));
  toy<float> m5;  // DoRA model, LoRA file
  inject_adapters<float>(m5, targets(target_modules::list({"q_proj"})), 2, 4, [&](const layer_info<float>& info) {
    return std::static_pointer_cast<adapter<float>>(
        dora_lora<float>(info.in, info.out, lcfg(2, 4), info.base->weight.value()));
  });
  CHECK_THAT(thrown_message([&] { io::load_peft_adapter(dir.str(), m5); }), Catch::Contains("use_dora = false"));
}

TEST_CASE("saving checks the model against the config", "[io][peft_dir]") {
  toy<float> m;
  inject_lora<float>(m, lcfg(2, 4), targets(target_modules::list({"q_proj"})));
  auto cfg = io::make_adapter_config(m);
  temp_dir dir;
  auto c = cfg;
  c.r = 5;
  CHECK_THROWS_AS(io::save_peft_adapter(dir.str(), m, c), value_error);
  CHECK_THAT(thrown_message([&] { io::save_peft_adapter(dir.str(), m, c); }),
             Catch::Contains("'encoder.q_proj' has r = 2") && Catch::Contains("gives 5"));
  c = cfg;
  c.lora_alpha = 5;
  CHECK_THAT(thrown_message([&] { io::save_peft_adapter(dir.str(), m, c); }), Catch::Contains("lora_alpha"));
  c = cfg;
  c.target_modules = std::vector<std::string>{"encoder.q_proj"};
  CHECK_THAT(thrown_message([&] { io::save_peft_adapter(dir.str(), m, c); }),
             Catch::Contains("'decoder.q_proj' is adapted but target_modules does not select it"));
  c = cfg;
  c.target_modules = std::vector<std::string>{"q_proj", "classifier"};
  CHECK_THAT(thrown_message([&] { io::save_peft_adapter(dir.str(), m, c); }),
             Catch::Contains("'classifier' is selected by target_modules but has no adapter"));
  c = cfg;
  c.modules_to_save = std::vector<std::string>{"head"};
  CHECK_THAT(thrown_message([&] { io::save_peft_adapter(dir.str(), m, c); }),
             Catch::Contains("modules_to_save 'head' not found"));
  CHECK_FALSE(std::filesystem::exists(dir.path));  // nothing written
  toy<float> plain;
  CHECK_THROWS_WITH(io::make_adapter_config(plain), Catch::Contains("no adapted layers"));
}
