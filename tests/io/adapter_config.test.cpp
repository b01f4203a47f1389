#include <catch2/catch.hpp>

#include <filesystem>
#include <fstream>
#include <functional>
#include <string>

#include <unistd.h>

#include "peft/io/adapter_config.hpp"
#include "../support/thrown.hpp"

using namespace peft;
using io::adapter_config;

namespace {
std::string data_dir() { return (std::filesystem::path(__FILE__).parent_path() / "data").string(); }
std::string corpus(const std::string& name) { return data_dir() + "/adapter_config/" + name; }
std::string read_text(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}
std::string thrown_message(const std::function<void()>& f) {
  return test::thrown_message<io_error>(f);
}
}  // namespace

TEST_CASE("defaults are PEFT's LoraConfig and VeraConfig defaults", "[io][adapter_config]") {
  const auto l = adapter_config::lora();
  CHECK(l.peft_type == "LORA");
  CHECK(l.r == 8);
  CHECK(l.lora_alpha == 8);
  CHECK(l.lora_dropout == 0.0);
  CHECK(l.bias == "none");
  CHECK_FALSE(l.use_rslora);
  CHECK_FALSE(l.use_dora);
  CHECK_FALSE(l.fan_in_fan_out);
  CHECK(std::get<bool>(l.init_lora_weights));
  CHECK(l.rank_pattern.empty());
  CHECK(l.alpha_pattern.empty());
  CHECK_FALSE(l.modules_to_save);
  CHECK(l.extra.at("megatron_core") == "megatron.core");
  const auto v = adapter_config::vera();
  CHECK(v.peft_type == "VERA");
  CHECK(v.r == 256);
  CHECK(v.d_initial == 0.1);
  CHECK(v.projection_prng_key == 0);
  CHECK(v.save_projection);
  CHECK(v.vera_dropout == 0.0);
  CHECK(v.init_weights);
}

TEST_CASE("a PEFT-written LoRA config parses, keeps unknown keys and re-dumps byte for byte",
          "[io][adapter_config]") {
  // valid_lora_peft.json has PEFT 0.19's full key set, written with json.dumps(indent=2,
  // sort_keys=True) as PeftConfig.save_pretrained does.
  const std::string path = corpus("valid_lora_peft.json");
  const auto c = adapter_config::load(path);
  CHECK(c.is_lora());
  CHECK(c.r == 8);
  CHECK(c.lora_alpha == 16);
  CHECK(c.lora_dropout == 0.05);
  CHECK(c.task_type == "CAUSAL_LM");
  CHECK(c.base_model_name_or_path == "toy/mlp");
  CHECK_FALSE(c.revision);
  CHECK(c.inference_mode);
  CHECK(std::get<std::vector<std::string>>(c.target_modules) == std::vector<std::string>{"v_proj", "q_proj"});
  CHECK(std::holds_alternative<std::monostate>(c.exclude_modules));
  CHECK(c.extra.at("peft_version") == "0.19.1");
  CHECK(c.extra.at("qalora_group_size") == 16);
  CHECK(c.extra.at("loftq_config") == nlohmann::json::object());
  CHECK_FALSE(c.extra.contains("r"));
  const std::string text = read_text(path);
  CHECK(c.dump() == text);
  CHECK(c.to_json() == nlohmann::json::parse(text));
}

TEST_CASE("every valid corpus config round-trips exactly", "[io][adapter_config]") {
  for (auto name : {"valid_lora_peft.json", "valid_dora_rslora_patterns.json", "valid_regex_targets.json",
                    "valid_vera.json", "valid_unicode.json"}) {
    INFO(name);
    const std::string text = read_text(corpus(name));
    const auto c = adapter_config::parse(text, name);
    CHECK(c.dump() == text);
    CHECK(adapter_config::parse(c.dump()).dump() == text);
  }
  const auto d = adapter_config::load(corpus("valid_dora_rslora_patterns.json"));
  CHECK(d.use_dora);
  CHECK(d.use_rslora);
  CHECK(d.r == 4);
  CHECK(d.lora_alpha == 8.5);
  CHECK(d.rank_pattern == std::map<std::string, std::size_t>{{"fc1", 2}, {"layers\\.1\\.q_proj", 6}});
  CHECK(d.alpha_pattern == std::map<std::string, double>{{"fc1", 3.0}});
  CHECK(d.modules_to_save == std::vector<std::string>{"classifier"});
  CHECK(std::get<std::string>(d.init_lora_weights) == "gaussian");
  const auto r = adapter_config::load(corpus("valid_regex_targets.json"));
  CHECK(std::get<std::string>(r.target_modules) == ".*\\.(q|v)_proj");
  CHECK_FALSE(r.task_type);
  const auto v = adapter_config::load(corpus("valid_vera.json"));
  CHECK(v.is_vera());
  CHECK(v.r == 256);
  CHECK(v.d_initial == 0.1);
  CHECK(v.save_projection);
  CHECK_FALSE(v.extra.contains("d_initial"));
  const auto u = adapter_config::load(corpus("valid_unicode.json"));
  CHECK(u.base_model_name_or_path == "mod\u00e8le/\u6a21\u578b");
  CHECK_THAT(read_text(corpus("valid_unicode.json")), Catch::Contains("\\u00e8"));  // ASCII-escaped, as Python
}

TEST_CASE("keys of the other method are kept as extras", "[io][adapter_config]") {
  // A VeRA config with lora_alpha: not a VeRA field, kept verbatim.
  auto c = adapter_config::parse(R"({"peft_type": "VERA", "r": 4, "lora_alpha": 7, "my_tool": {"x": [1, 2]}})");
  CHECK(c.r == 4);
  CHECK(c.extra.at("lora_alpha") == 7);
  CHECK(c.extra.at("my_tool") == nlohmann::json{{"x", {1, 2}}});
  const auto j = c.to_json();
  CHECK(j.at("lora_alpha") == 7);
  CHECK(j.at("my_tool") == nlohmann::json{{"x", {1, 2}}});
  CHECK_FALSE(j.contains("use_dora"));
  CHECK_FALSE(j.contains("exclude_modules"));  // not a VeraConfig key unless the file had it
  CHECK(j.at("projection_prng_key") == 0);
  const auto e = adapter_config::parse(R"({"peft_type": "VERA", "exclude_modules": ["fc"], "target_modules": null})");
  CHECK(std::get<std::vector<std::string>>(e.exclude_modules) == std::vector<std::string>{"fc"});
  CHECK(e.to_json().at("exclude_modules") == nlohmann::json{"fc"});
  const auto n = adapter_config::parse(R"({"peft_type": "VERA", "exclude_modules": null})");
  CHECK(n.to_json().at("exclude_modules").is_null());
  auto set = adapter_config::vera();
  set.exclude_modules = std::string("x.*");
  CHECK(set.to_json().at("exclude_modules") == "x.*");
}

TEST_CASE("malformed or mistyped configs give an io_error naming the file and the key", "[io][adapter_config]") {
  const std::vector<std::pair<std::string, std::vector<std::string>>> cases = {
      {"bad_r_string", {"key 'r' must be a positive integer", "got string \"8\""}},
      {"bad_r_zero", {"key 'r' must be a positive integer", "got number 0"}},
      {"bad_r_negative", {"key 'r' must be a positive integer", "-4"}},
      {"bad_r_float", {"key 'r' must be a positive integer", "8.5"}},
      {"bad_alpha_string", {"key 'lora_alpha' must be a number", "\"16\""}},
      {"bad_target_modules_number", {"key 'target_modules' must be a list of strings, a string or null"}},
      {"bad_target_modules_list_of_ints", {"key 'target_modules[1]' must be a string"}},
      {"bad_rank_pattern_value", {"key 'rank_pattern.q_proj' must be a positive integer", "4.5"}},
      {"bad_alpha_pattern_value", {"key 'alpha_pattern.q_proj' must be a number"}},
      {"bad_use_dora_string", {"key 'use_dora' must be a boolean", "\"true\""}},
      {"bad_modules_to_save_string", {"key 'modules_to_save' must be a list of strings or null"}},
      {"bad_peft_type_unknown", {"peft_type 'IA3' is not supported"}},
      {"bad_peft_type_missing", {"missing key 'peft_type'"}},
      {"bad_vera_prng_key_negative", {"key 'projection_prng_key' must be a non-negative integer"}},
      {"bad_not_object", {"top level is a JSON array"}},
      {"bad_invalid_json", {"invalid JSON"}},
      {"bad_duplicate_key", {"duplicate key 'r'"}},
      {"bad_non_utf8", {"not valid UTF-8"}},
      {"bad_deep_nesting", {"nests deeper than 64"}},
      {"bad_empty", {"invalid JSON"}},
  };
  std::size_t bad_files = 0;
  for (auto& e : std::filesystem::directory_iterator(data_dir() + "/adapter_config"))
    if (e.path().filename().string().rfind("bad_", 0) == 0) ++bad_files;
  CHECK(bad_files == cases.size());
  for (auto& [file, phrases] : cases) {
    const std::string path = corpus(file + ".json");
    INFO(path);
    REQUIRE(std::filesystem::exists(path));
    const std::string msg = thrown_message([&] { adapter_config::load(path); });
    INFO(msg);
    CHECK_THAT(msg, Catch::StartsWith("peft::io_error: adapter_config '" + path + "'"));
    for (auto& p : phrases) CHECK_THAT(msg, Catch::Contains(p));
  }
  CHECK_THAT(thrown_message([] { adapter_config::load("/nonexistent/adapter_config.json"); }),
             Catch::Contains("/nonexistent/adapter_config.json") && Catch::Contains("cannot read"));
}

TEST_CASE("save writes PEFT's layout atomically", "[io][adapter_config]") {
  const auto dir = std::filesystem::temp_directory_path() / ("peft_io_ac_" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  auto c = adapter_config::lora();
  c.r = 4;
  c.lora_alpha = 8;
  c.lora_dropout = 0.1;
  c.target_modules = std::vector<std::string>{"q_proj", "v_proj"};
  c.rank_pattern["fc1"] = 2;
  c.alpha_pattern["fc1"] = 2.5;
  c.modules_to_save = std::vector<std::string>{"classifier"};
  const std::string path = (dir / "adapter_config.json").string();
  c.save(path);
  const std::string text = read_text(path);
  CHECK(text.rfind("{\n  \"alpha_pattern\": {\n    \"fc1\": 2.5\n  },\n  \"auto_mapping\": null,", 0) == 0);
  CHECK_THAT(text, Catch::Contains("\n  \"lora_alpha\": 8,\n") && Catch::Contains("\n  \"lora_dropout\": 0.1,\n") &&
                       Catch::Contains("\"target_modules\": [\n    \"q_proj\",\n    \"v_proj\"\n  ],"));
  CHECK(text.back() == '}');  // no trailing newline, as json.dumps
  const auto back = adapter_config::load(path);
  CHECK(back.dump() == text);
  CHECK(back.rank_pattern == c.rank_pattern);
  CHECK(back.alpha_pattern == c.alpha_pattern);
  CHECK(std::distance(std::filesystem::directory_iterator(dir), std::filesystem::directory_iterator()) == 1);
  std::filesystem::remove_all(dir);
}
