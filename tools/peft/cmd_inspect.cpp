// peft inspect <adapter dir | file.gguf | file.safetensors | file.npy>
// Prints what a file holds. A PEFT adapter directory: the method (peft_type, use_dora,
// use_rslora), r / lora_alpha with rank_pattern / alpha_pattern, target modules, modules_to_save,
// the adapted modules with their effective rank, alpha and scale, the tensor table and parameter
// counts. GGUF: general.* and adapter.* metadata (alpha for LoRA adapters), every other key, the
// tensor table (row-major shapes) and counts. safetensors: metadata, tensor table, counts. .npy:
// version, dtype, shape. The format is recognised by content (GGUF and .npy magic), not by name.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "cli_model.hpp"
#include "commands.hpp"
#include "peft/io/gguf.hpp"
#include "peft/io/npy.hpp"

namespace {
using row = std::vector<std::string>;

std::string grouped(std::uint64_t n) {
  const std::string d = std::to_string(n);
  std::string s;
  for (std::size_t i = 0; i < d.size(); ++i) {
    if (i && (d.size() - i) % 3 == 0) s += ',';
    s += d[i];
  }
  return s;
}
std::string number(double x) {
  std::ostringstream os;
  os << std::setprecision(10) << x;
  return os.str();
}
std::uint64_t count(const peft::shape_t& s) {
  std::uint64_t n = 1;
  for (auto d : s) n *= d;  // shapes come from validated files: no overflow
  return n;
}

void print_table(const std::vector<row>& rows, const std::string& indent = "  ") {
  if (rows.empty()) return;
  std::vector<std::size_t> width(rows.front().size(), 0);
  for (auto& r : rows)
    for (std::size_t i = 0; i < r.size(); ++i) width[i] = std::max(width[i], r[i].size());
  for (auto& r : rows) {
    std::string line = indent;
    for (std::size_t i = 0; i < r.size(); ++i) {
      line += r[i];
      if (i + 1 < r.size()) line.append(width[i] - r[i].size() + 2, ' ');
    }
    std::cout << line << '\n';
  }
}

std::string json_short(const nlohmann::json& j) {
  std::string s = j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  return s.size() > 200 ? s.substr(0, 197) + "..." : s;
}

// ---- safetensors ----

void tensor_table(const peft::io::safetensors_file& f, std::uint64_t& params) {
  std::vector<row> rows{{"name", "shape", "dtype"}};
  params = 0;
  for (auto& [name, e] : f.entries()) {
    rows.push_back({name, peft::shape_str(e.shape), peft::io::dtype_name(e.type)});
    params += count(e.shape);
  }
  print_table(rows, "    ");
}

void inspect_safetensors(const std::string& path) {
  const auto f = peft::io::safetensors_file::load(path);
  std::cout << "safetensors '" << path << "'\n";
  if (!f.metadata().empty()) {
    std::cout << "  metadata\n";
    std::vector<row> rows;
    for (auto& [k, v] : f.metadata()) rows.push_back({k, v.size() > 200 ? v.substr(0, 197) + "..." : v});
    print_table(rows, "    ");
  }
  std::cout << "  tensors (" << f.size() << ")\n";
  std::uint64_t params = 0;
  tensor_table(f, params);
  std::cout << "  parameters: " << grouped(params) << " in " << f.size() << " tensors\n";
}

// ---- adapter directory ----

void inspect_adapter_dir(const std::string& path) {
  const auto a = peft_cli::read_adapter_dir(path);
  const auto& c = a.config;
  const nlohmann::json j = c.to_json();
  std::string method = c.peft_type == "VERA" ? "VeRA" : c.use_dora ? "DoRA" : c.use_rslora ? "rsLoRA" : "LoRA";
  if (c.is_lora() && c.use_dora && c.use_rslora) method = "DoRA + rsLoRA";
  std::cout << "PEFT adapter directory '" << path << "'\n";
  std::vector<row> info{{"method", method},
                        {"peft_type", c.peft_type},
                        {"use_dora", c.use_dora ? "true" : "false"},
                        {"use_rslora", c.use_rslora ? "true" : "false"},
                        {"r", std::to_string(c.r)}};
  if (c.is_lora()) {
    info.push_back({"lora_alpha", number(c.lora_alpha)});
    info.push_back({"rank_pattern", json_short(j["rank_pattern"])});
    info.push_back({"alpha_pattern", json_short(j["alpha_pattern"])});
    info.push_back({"lora_dropout", number(c.lora_dropout)});
  } else {
    info.push_back({"projection_prng_key", std::to_string(c.projection_prng_key)});
    info.push_back({"save_projection", c.save_projection ? "true" : "false"});
    info.push_back({"d_initial", number(c.d_initial)});
  }
  info.push_back({"target_modules", json_short(j["target_modules"])});
  if (!std::holds_alternative<std::monostate>(c.exclude_modules))
    info.push_back({"exclude_modules", json_short(j["exclude_modules"])});
  info.push_back({"modules_to_save", json_short(j["modules_to_save"])});
  if (c.base_model_name_or_path) info.push_back({"base_model", *c.base_model_name_or_path});
  if (c.task_type) info.push_back({"task_type", *c.task_type});
  print_table(info);

  // Effective per-module settings (PEFT's pattern rule: the first key matching (.*\.)?key$).
  std::cout << "  adapted modules (" << a.modules.size() << ")\n";
  const std::string prefix = peft::io::peft_key_prefix;
  std::vector<row> rows;
  if (c.is_lora()) {
    rows.push_back({"module", "r", "alpha", "scale", "in", "out"});
    for (auto& m : a.modules) {
      std::size_t r = c.r;
      double alpha = c.lora_alpha;
      if (auto* v = peft::detail::pattern_value(c.rank_pattern, m)) r = *v;
      if (auto* v = peft::detail::pattern_value(c.alpha_pattern, m)) alpha = *v;
      std::string in = "?", out = "?", rs = std::to_string(r);
      if (a.weights.contains(prefix + m + ".lora_A.weight")) {
        const auto& s = a.weights.at(prefix + m + ".lora_A.weight").shape;
        if (s.size() == 2) {
          in = std::to_string(s[1]);
          if (s[0] != r) rs += " (file: " + std::to_string(s[0]) + ")";
        }
      }
      if (a.weights.contains(prefix + m + ".lora_B.weight")) {
        const auto& s = a.weights.at(prefix + m + ".lora_B.weight").shape;
        if (s.size() == 2) out = std::to_string(s[0]);
      }
      const double scale = c.use_rslora ? alpha / std::sqrt(double(r)) : alpha / double(r);
      rows.push_back({m, rs, number(alpha), number(scale), in, out});
    }
  } else {
    rows.push_back({"module", "r", "out"});
    for (auto& m : a.modules) {
      std::string out = "?";
      if (a.weights.contains(prefix + m + ".vera_lambda_b"))
        out = std::to_string(count(a.weights.at(prefix + m + ".vera_lambda_b").shape));
      rows.push_back({m, std::to_string(c.r), out});
    }
  }
  print_table(rows, "    ");
  if (!a.saved.empty()) {
    std::cout << "  modules_to_save tensors\n";
    std::vector<row> s;
    for (auto& [p, names] : a.saved)
      for (auto& n : names) s.push_back({p + "." + n});
    print_table(s, "    ");
  }
  std::cout << "  tensors (" << peft::io::adapter_weights_file << ", " << a.weights.size() << ")\n";
  std::uint64_t params = 0;
  tensor_table(a.weights, params);
  std::uint64_t shared = 0;
  for (const char* k : {"base_model.vera_A", "base_model.vera_B"})
    if (a.weights.contains(k)) shared += count(a.weights.at(k).shape);
  std::cout << "  parameters: " << grouped(params - shared) << " trainable";
  if (shared) std::cout << " + " << grouped(shared) << " in the shared VeRA projections";
  std::cout << " (" << a.weights.size() << " tensors)\n";
}

// ---- GGUF ----

std::string gguf_value_str(const peft::io::gguf_value& v) {
  using t = peft::io::gguf_value_type;
  if (v.is_array()) {
    std::string s = v.type_str() + " (" + std::to_string(v.array_size()) + " items)";
    return s;
  }
  switch (v.type()) {
    case t::string: {
      const auto& s = v.get<std::string>();
      return "\"" + (s.size() > 120 ? s.substr(0, 117) + "..." : s) + "\"";
    }
    case t::boolean: return v.get<bool>() ? "true" : "false";
    case t::float32:
    case t::float64: return number(v.to_double());
    case t::uint64: return std::to_string(v.to_uint64());
    default: return std::to_string(v.to_int64());
  }
}

void inspect_gguf(const std::string& path) {
  const auto f = peft::io::gguf_file::load(path);
  auto str = [&](const char* k) -> std::string {
    const auto* v = f.find(k);
    return v ? gguf_value_str(*v) : "(absent)";
  };
  std::cout << "GGUF '" << path << "'\n";
  std::vector<row> info{{"general.architecture", str("general.architecture")},
                        {"general.type", str("general.type")},
                        {"general.name", str("general.name")}};
  const auto* type = f.find("general.type");
  const bool adapter = type && type->type() == peft::io::gguf_value_type::string && type->get<std::string>() == "adapter";
  if (adapter) {
    info.push_back({"adapter.type", str("adapter.type")});
    info.push_back({"adapter.lora.alpha", str("adapter.lora.alpha")});
  }
  print_table(info);
  std::vector<row> rest;
  for (auto& [k, v] : f.metadata())
    if (k != "general.architecture" && k != "general.type" && k != "general.name" && k != "adapter.type" &&
        k != "adapter.lora.alpha")
      rest.push_back({k, gguf_value_str(v)});
  if (!rest.empty()) {
    std::cout << "  other metadata (" << rest.size() << ")\n";
    print_table(rest, "    ");
  }
  std::cout << "  tensors (" << f.tensors().size() << ")\n";
  std::vector<row> rows{{"name", "shape", "type"}};
  std::uint64_t params = 0;
  std::map<std::string, std::pair<std::string, std::string>> lora;  // target -> (r, in x out)
  for (auto& [name, t] : f.tensors()) {
    rows.push_back({name, peft::shape_str(t.shape()), peft::io::ggml_type_name(t.type)});
    params += t.numel();
    if (adapter && t.ne.size() == 2) {
      if (peft_cli::ends_with(name, ".lora_a")) lora[name.substr(0, name.size() - 7)].first = std::to_string(t.ne[1]);
      if (peft_cli::ends_with(name, ".lora_b")) lora[name.substr(0, name.size() - 7)].second = std::to_string(t.ne[1]);
    }
  }
  print_table(rows, "    ");
  if (!lora.empty()) {
    std::cout << "  LoRA modules (" << lora.size() << ")\n";
    std::vector<row> lr{{"target", "r", "out"}};
    for (auto& [k, v] : lora) lr.push_back({k, v.first.empty() ? "?" : v.first, v.second.empty() ? "?" : v.second});
    print_table(lr, "    ");
  }
  std::cout << "  parameters: " << grouped(params) << " in " << f.tensors().size() << " tensors\n";
}

// ---- npy ----

void inspect_npy(const std::string& path) {
  const auto h = peft::io::read_npy_header(path);
  std::cout << "npy '" << path << "'\n";
  print_table({{"version", std::to_string(h.major) + "." + std::to_string(h.minor)},
               {"dtype", peft::io::npy_dtype_name(h.dtype)},
               {"shape", peft::shape_str(h.shape)},
               {"elements", grouped(count(h.shape))}});
}

void run_inspect(const std::string& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (fs::is_directory(path, ec)) return inspect_adapter_dir(path);
  if (!fs::exists(path, ec)) throw peft::io_error("'" + path + "': no such file or directory");
  char magic[6] = {};
  std::ifstream in(path, std::ios::binary);
  if (!in) throw peft::io_error("'" + path + "': cannot open");
  in.read(magic, 6);
  const auto got = std::size_t(in.gcount());
  if (got >= 4 && std::string(magic, 4) == "GGUF") return inspect_gguf(path);
  if (got >= 6 && std::string(magic, 6) == "\x93NUMPY") return inspect_npy(path);
  inspect_safetensors(path);
}
}  // namespace

void register_inspect(CLI::App& app) {
  auto* sub = app.add_subcommand("inspect", "Show what an adapter directory, GGUF, safetensors or .npy file holds.");
  auto path = std::make_shared<std::string>();
  sub->add_option("path", *path,
                  "A PEFT adapter directory (adapter_config.json + adapter_model.safetensors), a .gguf file "
                  "(model or LoRA adapter), a .safetensors file or a .npy file; recognised by content.")
      ->required();
  sub->callback([path] { peft_cli::run("inspect", [&] { run_inspect(*path); }); });
}
