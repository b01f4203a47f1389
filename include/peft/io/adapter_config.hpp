#pragma once
// adapter_config.json as Hugging Face PEFT writes it (PeftConfig.save_pretrained: json.dumps with
// indent=2, sort_keys=True). Modelled: the keys of LoraConfig (peft_type "LORA", which also
// covers rsLoRA via use_rslora and DoRA via use_dora) and VeraConfig (peft_type "VERA") that
// change what an adapter computes or which layers it wraps. Every other key is kept in `extra`
// exactly as read and written back on save, so a file survives a round trip. A key of the wrong
// type is an io_error naming the file and the key; the JSON itself is parsed strictly (valid
// UTF-8, no duplicate keys, bounded nesting).
#include <cmath>
#include <cstdint>
#include <limits>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "peft/core/config.hpp"
#include "peft/core/error.hpp"
#include "peft/io/detail/util.hpp"

namespace peft::io {

// target_modules / exclude_modules: null, a list of module names, or one string (a regex that
// must match the whole module path, or "all-linear").
using module_spec = std::variant<std::monostate, std::vector<std::string>, std::string>;

struct adapter_config {
  // ---- PeftConfig ----
  std::string peft_type = "LORA";  // "LORA" or "VERA"
  std::optional<std::string> task_type;
  std::optional<std::string> base_model_name_or_path;
  std::optional<std::string> revision;
  bool inference_mode = false;  // PEFT's default; save_pretrained writes true

  // ---- shared by LoraConfig and VeraConfig ----
  std::size_t r = 8;
  module_spec target_modules;
  module_spec exclude_modules;
  std::optional<std::vector<std::string>> modules_to_save;
  std::string bias = "none";
  bool fan_in_fan_out = false;

  // ---- LoraConfig ----
  double lora_alpha = 8;
  double lora_dropout = 0.0;
  bool use_rslora = false;
  bool use_dora = false;
  std::variant<bool, std::string> init_lora_weights = true;
  std::map<std::string, std::size_t> rank_pattern;
  std::map<std::string, double> alpha_pattern;

  // ---- VeraConfig ----
  std::uint64_t projection_prng_key = 0;
  bool save_projection = true;
  double vera_dropout = 0.0;
  double d_initial = 0.1;
  bool init_weights = true;

  // Every key not modelled above for this peft_type, as read.
  nlohmann::json extra = nlohmann::json::object();

  // LoraConfig's defaults, with LoraConfig's other long-standing keys in `extra` at their
  // defaults so the written file has PEFT's usual key set.
  static adapter_config lora();
  // VeraConfig's defaults (r = 256, d_initial = 0.1, save_projection = true).
  static adapter_config vera();

  bool is_lora() const { return peft_type == "LORA"; }
  bool is_vera() const { return peft_type == "VERA"; }

  // ---- reading ----

  static adapter_config from_json(const nlohmann::json& j, const std::string& source = "<json>");
  static adapter_config parse(std::string_view text, const std::string& source = "<memory>");
  static adapter_config load(const std::string& path);

  // ---- writing ----

  nlohmann::json to_json() const;
  // PEFT's layout: 2-space indent, keys sorted, non-ASCII escaped, no trailing newline.
  std::string dump() const;
  // Writes the file atomically.
  void save(const std::string& path) const;

  static constexpr int max_depth = 64;
  static constexpr std::uintmax_t max_file_bytes = 16u << 20;

 private:
  static std::string shown(const nlohmann::json& v);
  static io_error bad_type(const std::string& w, const std::string& key, const char* want,
                           const nlohmann::json& v);
  static std::string get_string(const std::string& w, const std::string& k, const nlohmann::json& v);
  static std::optional<std::string> get_opt_string(const std::string& w, const std::string& k,
                                                   const nlohmann::json& v);
  static bool get_bool(const std::string& w, const std::string& k, const nlohmann::json& v);
  static double get_number(const std::string& w, const std::string& k, const nlohmann::json& v);
  static std::size_t get_positive(const std::string& w, const std::string& k, const nlohmann::json& v);
  static std::optional<std::vector<std::string>> get_opt_string_list(const std::string& w, const std::string& k,
                                                                     const nlohmann::json& v);
  static module_spec get_module_spec(const std::string& w, const std::string& k, const nlohmann::json& v);
  static nlohmann::json opt(const std::optional<std::string>& s);
  static nlohmann::json spec_json(const module_spec& s);
  // Integral values as JSON integers (PEFT types lora_alpha as int), others as floats.
  static nlohmann::json number_json(double x);
};

// ---- definitions: here (inline) for header-only programs; in the compiled library only in
// src/io.cpp (PEFT_UNIT_IO), so that they are defined once ----
#if !defined(PEFT_COMPILED_LIB) || defined(PEFT_UNIT_IO)
PEFT_INLINE adapter_config adapter_config::lora() {
  adapter_config c;
  c.extra = {{"auto_mapping", nullptr},   {"layers_pattern", nullptr}, {"layers_to_transform", nullptr},
             {"layer_replication", nullptr}, {"loftq_config", nlohmann::json::object()},
             {"megatron_config", nullptr}, {"megatron_core", "megatron.core"}};
  return c;
}
PEFT_INLINE adapter_config adapter_config::vera() {
  adapter_config c;
  c.peft_type = "VERA";
  c.r = 256;
  c.extra = {{"auto_mapping", nullptr}, {"layers_pattern", nullptr}, {"layers_to_transform", nullptr}};
  return c;
}

PEFT_INLINE adapter_config adapter_config::from_json(const nlohmann::json& j, const std::string& source) {
  const std::string w = "adapter_config '" + source + "'";
  if (!j.is_object()) throw io_error(w + ": top level is a JSON " + j.type_name() + ", not an object");
  adapter_config c;
  c.extra = nlohmann::json::object();
  const auto pt = j.find("peft_type");
  if (pt == j.end()) throw io_error(w + ": missing key 'peft_type'");
  c.peft_type = get_string(w, "peft_type", *pt);
  if (c.peft_type != "LORA" && c.peft_type != "VERA")
    throw io_error(w + ": peft_type '" + c.peft_type + "' is not supported (LORA or VERA)");
  if (c.is_vera()) c.r = 256;  // VeraConfig's default when "r" is absent

  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& k = it.key();
    const nlohmann::json& v = it.value();
    if (k == "peft_type") continue;
    if (k == "task_type") c.task_type = get_opt_string(w, k, v);
    else if (k == "base_model_name_or_path") c.base_model_name_or_path = get_opt_string(w, k, v);
    else if (k == "revision") c.revision = get_opt_string(w, k, v);
    else if (k == "inference_mode") c.inference_mode = get_bool(w, k, v);
    else if (k == "r") c.r = get_positive(w, k, v);
    else if (k == "target_modules") c.target_modules = get_module_spec(w, k, v);
    else if (k == "modules_to_save") c.modules_to_save = get_opt_string_list(w, k, v);
    else if (k == "bias") c.bias = get_string(w, k, v);
    else if (k == "fan_in_fan_out") c.fan_in_fan_out = get_bool(w, k, v);
    else if (c.is_lora() && k == "lora_alpha") c.lora_alpha = get_number(w, k, v);
    else if (c.is_lora() && k == "lora_dropout") c.lora_dropout = get_number(w, k, v);
    else if (c.is_lora() && k == "use_rslora") c.use_rslora = get_bool(w, k, v);
    else if (c.is_lora() && k == "use_dora") c.use_dora = get_bool(w, k, v);
    else if (k == "exclude_modules") {
      c.exclude_modules = get_module_spec(w, k, v);
      if (!c.is_lora()) c.extra[k] = v;  // remembers that the key was there (to_json overwrites it)
    }
    else if (c.is_lora() && k == "init_lora_weights") {
      if (v.is_boolean()) c.init_lora_weights = v.get<bool>();
      else if (v.is_string()) c.init_lora_weights = v.get<std::string>();
      else throw bad_type(w, k, "a boolean or a string", v);
    } else if (c.is_lora() && k == "rank_pattern") {
      c.rank_pattern.clear();
      if (!v.is_null()) {
        if (!v.is_object()) throw bad_type(w, k, "an object of positive integers", v);
        for (auto p = v.begin(); p != v.end(); ++p)
          c.rank_pattern[p.key()] = get_positive(w, k + "." + p.key(), p.value());
      }
    } else if (c.is_lora() && k == "alpha_pattern") {
      c.alpha_pattern.clear();
      if (!v.is_null()) {
        if (!v.is_object()) throw bad_type(w, k, "an object of numbers", v);
        for (auto p = v.begin(); p != v.end(); ++p)
          c.alpha_pattern[p.key()] = get_number(w, k + "." + p.key(), p.value());
      }
    } else if (c.is_vera() && k == "projection_prng_key") {
      if (!v.is_number_unsigned()) throw bad_type(w, k, "a non-negative integer", v);
      c.projection_prng_key = v.get<std::uint64_t>();
    } else if (c.is_vera() && k == "save_projection") c.save_projection = get_bool(w, k, v);
    else if (c.is_vera() && k == "vera_dropout") c.vera_dropout = get_number(w, k, v);
    else if (c.is_vera() && k == "d_initial") c.d_initial = get_number(w, k, v);
    else if (c.is_vera() && k == "init_weights") c.init_weights = get_bool(w, k, v);
    else c.extra[k] = v;
  }
  return c;
}
PEFT_INLINE adapter_config adapter_config::parse(std::string_view text, const std::string& source) {
  return from_json(detail::parse_json_strict(text, max_depth, "adapter_config '" + source + "'"), source);
}
PEFT_INLINE adapter_config adapter_config::load(const std::string& path) {
  return parse(detail::read_file_bytes(path, max_file_bytes, "adapter_config"), path);
}

PEFT_INLINE nlohmann::json adapter_config::to_json() const {
  nlohmann::json j = extra.is_object() ? extra : nlohmann::json::object();
  j["peft_type"] = peft_type;
  j["task_type"] = opt(task_type);
  j["base_model_name_or_path"] = opt(base_model_name_or_path);
  j["revision"] = opt(revision);
  j["inference_mode"] = inference_mode;
  j["r"] = r;
  j["target_modules"] = spec_json(target_modules);
  j["modules_to_save"] = modules_to_save ? nlohmann::json(*modules_to_save) : nlohmann::json(nullptr);
  j["bias"] = bias;
  j["fan_in_fan_out"] = fan_in_fan_out;
  // LoraConfig always has exclude_modules; other configs when it was read or is set.
  if (is_lora() || j.contains("exclude_modules") || !std::holds_alternative<std::monostate>(exclude_modules))
    j["exclude_modules"] = spec_json(exclude_modules);
  if (is_lora()) {
    j["lora_alpha"] = number_json(lora_alpha);
    j["lora_dropout"] = lora_dropout;
    j["use_rslora"] = use_rslora;
    j["use_dora"] = use_dora;
    j["init_lora_weights"] = std::visit([](const auto& x) { return nlohmann::json(x); }, init_lora_weights);
    j["rank_pattern"] = nlohmann::json::object();
    for (auto& [k, v] : rank_pattern) j["rank_pattern"][k] = v;
    j["alpha_pattern"] = nlohmann::json::object();
    for (auto& [k, v] : alpha_pattern) j["alpha_pattern"][k] = number_json(v);
  } else {
    j["projection_prng_key"] = projection_prng_key;
    j["save_projection"] = save_projection;
    j["vera_dropout"] = vera_dropout;
    j["d_initial"] = d_initial;
    j["init_weights"] = init_weights;
  }
  return j;
}

PEFT_INLINE std::string adapter_config::dump() const {
  try {
    return to_json().dump(2, ' ', true);
  } catch (const nlohmann::json::exception& e) {
    throw value_error(std::string("adapter_config: cannot write JSON: ") + e.what());
  }
}

PEFT_INLINE void adapter_config::save(const std::string& path) const {
  const std::string s = dump();
  detail::write_file_atomic(path, [&](detail::file_sink& f) { f.write(s.data(), s.size()); });
}

PEFT_INLINE std::string adapter_config::shown(const nlohmann::json& v) {
  std::string s = v.dump(-1, ' ', true, nlohmann::json::error_handler_t::replace);
  if (s.size() > 60) s = s.substr(0, 57) + "...";
  return s;
}
PEFT_INLINE io_error adapter_config::bad_type(const std::string& w, const std::string& key, const char* want,
                                             const nlohmann::json& v) {
  return io_error(w + ": key '" + key + "' must be " + want + ", got " + v.type_name() + " " + shown(v));
}

PEFT_INLINE std::string adapter_config::get_string(const std::string& w, const std::string& k,
                                                   const nlohmann::json& v) {
  if (!v.is_string()) throw bad_type(w, k, "a string", v);
  return v.get<std::string>();
}
PEFT_INLINE std::optional<std::string> adapter_config::get_opt_string(const std::string& w, const std::string& k,
                                                                   const nlohmann::json& v) {
  if (v.is_null()) return std::nullopt;
  if (!v.is_string()) throw bad_type(w, k, "a string or null", v);
  return v.get<std::string>();
}
PEFT_INLINE bool adapter_config::get_bool(const std::string& w, const std::string& k, const nlohmann::json& v) {
  if (!v.is_boolean()) throw bad_type(w, k, "a boolean", v);
  return v.get<bool>();
}
PEFT_INLINE double adapter_config::get_number(const std::string& w, const std::string& k, const nlohmann::json& v) {
  if (!v.is_number()) throw bad_type(w, k, "a number", v);
  return v.get<double>();
}
PEFT_INLINE std::size_t adapter_config::get_positive(const std::string& w, const std::string& k,
                                                     const nlohmann::json& v) {
  if (!v.is_number_unsigned() || v.get<std::uint64_t>() == 0 ||
      v.get<std::uint64_t>() > std::uint64_t(std::numeric_limits<std::size_t>::max()))
    throw bad_type(w, k, "a positive integer", v);
  return std::size_t(v.get<std::uint64_t>());
}
PEFT_INLINE std::optional<std::vector<std::string>> adapter_config::get_opt_string_list(const std::string& w,
                                                                                     const std::string& k,
                                                                                     const nlohmann::json& v) {
  if (v.is_null()) return std::nullopt;
  if (!v.is_array()) throw bad_type(w, k, "a list of strings or null", v);
  std::vector<std::string> out;
  for (std::size_t i = 0; i < v.size(); ++i) {
    if (!v[i].is_string()) throw bad_type(w, k + "[" + std::to_string(i) + "]", "a string", v[i]);
    out.push_back(v[i].get<std::string>());
  }
  return out;
}

PEFT_INLINE module_spec adapter_config::get_module_spec(const std::string& w, const std::string& k,
                                                        const nlohmann::json& v) {
  if (v.is_null()) return std::monostate{};
  if (v.is_string()) return v.get<std::string>();
  if (!v.is_array()) throw bad_type(w, k, "a list of strings, a string or null", v);
  return *get_opt_string_list(w, k, v);
}

PEFT_INLINE nlohmann::json adapter_config::opt(const std::optional<std::string>& s) {
  return s ? nlohmann::json(*s) : nlohmann::json(nullptr);
}
PEFT_INLINE nlohmann::json adapter_config::spec_json(const module_spec& s) {
  if (auto* l = std::get_if<std::vector<std::string>>(&s)) return nlohmann::json(*l);
  if (auto* r = std::get_if<std::string>(&s)) return nlohmann::json(*r);
  return nullptr;
}
PEFT_INLINE nlohmann::json adapter_config::number_json(double x) {
  if (std::isfinite(x) && x == std::floor(x) && std::fabs(x) < 9007199254740992.0)
    return nlohmann::json(std::int64_t(x));
  return nlohmann::json(x);
}
#endif  // !PEFT_COMPILED_LIB || PEFT_UNIT_IO

}  // namespace peft::io
