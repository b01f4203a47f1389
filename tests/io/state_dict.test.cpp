#include <catch2/catch.hpp>

#include <cstring>
#include <filesystem>
#include <functional>
#include <string>

#include <unistd.h>

#include "peft/adapters/inject.hpp"
#include "peft/io/state_dict.hpp"
#include "peft/nn/linear.hpp"
#include "../support/thrown.hpp"

using namespace peft;

namespace {
template <class T>
struct net : nn::unary_module<T> {
  explicit net(std::uint64_t seed) {
    rng g(seed);
    fc1 = std::make_shared<nn::linear<T>>(4, 6, true, g);
    fc2 = std::make_shared<nn::linear<T>>(6, 2, false, g);
    this->register_module("fc1", fc1);
    this->register_module("fc2", fc2);
  }
  variable<T> forward(const variable<T>& x) override { return fc2->forward(fc1->forward(x)); }
  std::shared_ptr<nn::unary_module<T>> fc1, fc2;
};

std::string temp_file(const std::string& name) {
  return (std::filesystem::temp_directory_path() / ("peft_io_sd_" + std::to_string(::getpid()) + "_" + name)).string();
}
using test::thrown_message;
template <class T>
bool same_params(const nn::module<T>& a, const nn::module<T>& b) {
  const auto pa = a.get_state_dict(), pb = b.get_state_dict();
  if (pa.size() != pb.size()) return false;
  for (auto& [k, t] : pa) {
    auto it = pb.find(k);
    if (it == pb.end() || shape_of(it->second) != shape_of(t) ||
        std::memcmp(t.data(), it->second.data(), t.size() * sizeof(T)) != 0)
      return false;
  }
  return true;
}
}  // namespace

TEST_CASE("a model's state dict round-trips bitwise by name", "[io][state_dict]") {
  const std::string path = temp_file("a.safetensors");
  net<double> a(1), b(2);
  REQUIRE_FALSE(same_params(a, b));
  io::save_state_dict(path, a);
  const auto f = io::safetensors_file::load(path);
  CHECK(f.names() == std::vector<std::string>{"fc1.bias", "fc1.weight", "fc2.weight"});
  CHECK(f.at("fc1.weight").type == io::dtype::F64);
  CHECK(f.at("fc1.weight").shape == shape_t{6, 4});
  CHECK(f.metadata().at("format") == "pt");
  node<double>* before = b.fc1->named_parameters()[0].second.get();
  io::load_state_dict(path, b);
  CHECK(same_params(a, b));
  CHECK(b.fc1->named_parameters()[0].second.get() == before);  // values copied into the same nodes
  net<float> c(3);
  io::load_state_dict(path, c);  // F64 file into a float model: converted
  CHECK(c.get_state_dict().at("fc2.weight")(1, 3) == float(a.get_state_dict().at("fc2.weight")(1, 3)));
  std::filesystem::remove(path);
}

TEST_CASE("an adapted model's full state dict includes base_layer and adapter names", "[io][state_dict]") {
  const std::string path = temp_file("b.safetensors");
  net<float> a(1);
  lora_config lc;
  lc.r = 2;
  inject_options o;
  o.targets = target_modules::list({"fc1"});
  inject_lora<float>(a, lc, o);
  io::save_state_dict(path, a, io::dtype::BF16);
  const auto f = io::safetensors_file::load(path);
  CHECK(f.contains("fc1.base_layer.weight"));
  CHECK(f.contains("fc1.lora_A.weight"));
  CHECK(f.at("fc1.lora_A.weight").type == io::dtype::BF16);
  net<float> b(5);
  inject_lora<float>(b, lc, o);
  io::load_state_dict(path, b);
  const auto sa = a.get_state_dict(), sb = b.get_state_dict();
  for (auto& [k, t] : sa)
    for (std::size_t i = 0; i < t.size(); ++i)
      REQUIRE(sb.at(k).data()[i] == peft::detail::bf16_to_float(peft::detail::float_to_bf16(t.data()[i])));
  std::filesystem::remove(path);
}

TEST_CASE("loading checks names and shapes first and leaves the model untouched on error", "[io][state_dict]") {
  const std::string path = temp_file("c.safetensors");
  net<float> a(1);
  io::save_state_dict(path, a);
  int edits = 0;
  auto edit = [&](const std::function<void(io::safetensors_file&)>& f) {
    auto file = io::safetensors_file::load(path);
    f(file);
    std::string name = std::to_string(++edits);
    name += ".safetensors";
    const std::string p2 = temp_file(name);
    file.save(p2);
    return p2;
  };
  net<float> b(2);
  const auto before = b.get_state_dict();
  const auto wrong_shape = edit([](io::safetensors_file& f) {
    f.erase("fc2.weight");
    f.add("fc2.weight", zeros<float>({3, 6}));
  });
  CHECK_THAT(thrown_message([&] { io::load_state_dict(wrong_shape, b); }),
             Catch::Contains("'fc2.weight' has shape [3,6], the model expects [2,6]") &&
                 Catch::Contains(wrong_shape));
  CHECK((b.get_state_dict() == before));  // fc1 was not overwritten either
  const auto missing = edit([](io::safetensors_file& f) { f.erase("fc1.bias"); });
  CHECK_THAT(thrown_message([&] { io::load_state_dict(missing, b); }), Catch::Contains("missing tensor 'fc1.bias'"));
  const auto extra = edit([](io::safetensors_file& f) { f.add("fc3.weight", zeros<float>({1})); });
  CHECK_THAT(thrown_message([&] { io::load_state_dict(extra, b); }), Catch::Contains("unexpected tensor 'fc3.weight'"));
  CHECK((b.get_state_dict() == before));
  // Non-strict: missing and extra tensors are skipped; present ones load.
  io::load_state_dict(missing, b, false);
  CHECK((b.get_state_dict().at("fc1.bias") == before.at("fc1.bias")));
  CHECK((b.get_state_dict().at("fc1.weight") == a.get_state_dict().at("fc1.weight")));
  io::load_state_dict(extra, b, false);
  CHECK(same_params(a, b));
  std::filesystem::remove(path);
  for (auto p : {wrong_shape, missing, extra}) std::filesystem::remove(p);
}
