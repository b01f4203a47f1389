#pragma once
// Training checkpoints: everything a run needs to continue bit for bit after an interruption, in
// one safetensors file written atomically (<path>.tmp.<pid>, fsync, rename over <path>).
//
//   tensors      "param/<name>"         each registered (trainable) parameter
//                "optim/<i>/<tensor>"   the optimizer's named_state() of flat parameter i:
//                                       moments, 8-bit codes/absmax, projector state "proj.*"
//   __metadata__ "format" = "peft.checkpoint", "format_version" = "1",
//                "checkpoint" = JSON {step, dtype, parameters: [names], optimizer: {name,
//                  parameters: [names by flat index], lrs: [per group], state: {i: step count}},
//                  scheduler: {step, base_lrs}, rngs: {name: [4 words as 16 hex digits]}},
//                "user.<key>" = free-form user metadata
// All tensors are stored as T (F32 for float, F64 for double), so values round-trip exactly;
// loading refuses any other dtype rather than converting.
//
// Schedules: every schedule in optim/schedule.hpp is a pure function of the step, so an
// lr_scheduler's state is its step and its base learning rates. The checkpoint stores both; on
// load the scheduler's base lrs (from the freshly built optimizer) must equal the saved ones and
// its step is restored with set_step(). A custom schedule with hidden state must be rebuilt by
// the caller (e.g. from user metadata).
//
// Loading validates everything first (format, dtypes, names, shapes, missing and unexpected
// entries, optimizer type and parameter order, rng words) and throws io_error naming the path and
// the entry; only then is the state committed (the optimizer's own load_state validates its part
// before changing anything), so a failed load leaves the training objects as they were.
//
//   io::checkpoint<float> ck;
//   ck.add_parameters(model).set_optimizer(opt).set_scheduler(sched)
//     .add_rng("data", data_rng).add_rngs(io::adapter_rngs(model));
//   ck.save("run.ckpt", step, {{"note", "epoch 3"}});
//   ...                                     // fresh process, same construction
//   const auto info = ck.load("run.ckpt");  // info.step, info.metadata
#include <algorithm>
#include <charconv>
#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "peft/adapters/adapted_linear.hpp"
#include "peft/adapters/dora.hpp"
#include "peft/adapters/lora.hpp"
#include "peft/adapters/lora_xs.hpp"
#include "peft/adapters/moe.hpp"
#include "peft/adapters/moslora.hpp"
#include "peft/adapters/nola.hpp"
#include "peft/adapters/randlora.hpp"
#include "peft/adapters/vera.hpp"
#include "peft/core/config.hpp"
#include "peft/core/error.hpp"
#include "peft/core/random.hpp"
#include "peft/io/safetensors.hpp"
#include "peft/nn/module.hpp"
#include "peft/optim/optimizer.hpp"
#include "peft/optim/schedule.hpp"

namespace peft::io {

inline constexpr const char* checkpoint_format = "peft.checkpoint";
inline constexpr int checkpoint_format_version = 1;

// What load() / read_checkpoint_info() report.
struct checkpoint_info {
  std::size_t step = 0;
  int format_version = checkpoint_format_version;
  std::map<std::string, std::string> metadata;  // the user metadata given to save()
};

namespace detail {
// Dropout streams of one adapter (recursing into DoRA's inner adapter and MoE's experts).
template <class T>
void collect_adapter_rngs(adapter<T>& a, const std::string& path, std::vector<std::pair<std::string, rng*>>& out) {
  if (auto* d = dynamic_cast<dora<T>*>(&a)) return collect_adapter_rngs(d->inner(), path, out);
  if (auto* m = dynamic_cast<moe<T>*>(&a)) {
    out.emplace_back(path + ".router_noise", &m->noise_rng());
    for (std::size_t e = 0; e < m->num_experts(); ++e)
      collect_adapter_rngs(m->expert(e), path + ".experts." + std::to_string(e), out);
    return;
  }
  rng* g = nullptr;
  if (auto* x = dynamic_cast<lora<T>*>(&a)) g = &x->dropout_rng();
  else if (auto* x = dynamic_cast<vera<T>*>(&a)) g = &x->dropout_rng();
  else if (auto* x = dynamic_cast<nola<T>*>(&a)) g = &x->dropout_rng();
  else if (auto* x = dynamic_cast<lora_xs<T>*>(&a)) g = &x->dropout_rng();
  else if (auto* x = dynamic_cast<moslora<T>*>(&a)) g = &x->dropout_rng();
  else if (auto* x = dynamic_cast<randlora<T>*>(&a)) g = &x->dropout_rng();
  if (g) out.emplace_back(path + ".dropout", g);
}

PEFT_INLINE std::string hex_word(std::uint64_t w);
PEFT_INLINE bool parse_hex_word(const std::string& s, std::uint64_t& w);
}  // namespace detail

// The dropout random streams of every adapted layer of `model`, named "<layer path>.dropout"
// (MoE: "<path>.router_noise" and its experts' "<path>.experts.<e>.dropout"), for
// checkpoint::add_rngs. Covers LoRA (and DoRA over it), VeRA, NOLA, LoRA-XS, MoSLoRA, RandLoRA
// and MoE.
template <class T>
std::vector<std::pair<std::string, rng*>> adapter_rngs(nn::module<T>& model) {
  std::vector<std::pair<std::string, rng*>> out;
  for (auto& [path, m] : model.named_modules())
    if (auto* al = dynamic_cast<adapted_linear<T>*>(m)) detail::collect_adapter_rngs(al->get_adapter(), path, out);
  return out;
}

// The set of objects one checkpoint saves and restores. It holds references: the objects must
// outlive it, and load() writes into them.
template <class T>
class checkpoint {
 public:
  // A parameter saved under `name` (the node is shared: load() writes into it).
  checkpoint& add_parameter(const std::string& name, const variable<T>& v) {
    if (name.empty() || !detail::valid_utf8(name)) throw value_error("checkpoint: invalid parameter name '" + name + "'");
    if (!v.defined()) throw value_error("checkpoint: parameter '" + name + "' is undefined");
    for (auto& [n, p] : params_)
      if (n == name) throw value_error("checkpoint: duplicate parameter name '" + name + "'");
    params_.emplace_back(name, v);
    return *this;
  }
  // The model's parameters by their state-dict names; by default only those that require grad
  // (frozen weights come from the base model, not from the checkpoint). A parameter tied under
  // two names is saved once, under the first.
  checkpoint& add_parameters(const nn::module<T>& model, bool trainable_only = true) {
    std::set<const node<T>*> seen;
    for (auto& [n, p] : params_) seen.insert(p.get());
    for (auto& [name, v] : model.named_parameters())
      if ((!trainable_only || v.requires_grad()) && seen.insert(v.get()).second) add_parameter(name, v);
    return *this;
  }
  checkpoint& set_optimizer(optim::optimizer<T>& opt) {
    opt_ = &opt;
    return *this;
  }
  checkpoint& set_scheduler(optim::lr_scheduler<T>& s) {
    sched_ = &s;
    return *this;
  }
  checkpoint& add_rng(const std::string& name, rng& g) {
    if (name.empty() || !detail::valid_utf8(name)) throw value_error("checkpoint: invalid rng name '" + name + "'");
    if (rngs_.count(name)) throw value_error("checkpoint: duplicate rng name '" + name + "'");
    rngs_.emplace(name, &g);
    return *this;
  }
  checkpoint& add_rngs(const std::vector<std::pair<std::string, rng*>>& gs) {
    for (auto& [n, g] : gs) add_rng(n, *g);
    return *this;
  }

  const std::vector<std::pair<std::string, variable<T>>>& parameters() const { return params_; }

  // Writes the checkpoint atomically: on any failure the file at `path` is left as it was.
  void save(const std::string& path, std::size_t step, const std::map<std::string, std::string>& metadata = {}) const {
    safetensors_file f;
    nlohmann::json j;
    j["step"] = step;
    j["dtype"] = dtype_name(dtype_of<T>());
    j["parameters"] = nlohmann::json::array();
    for (auto& [name, v] : params_) {
      f.add("param/" + name, v.value());
      j["parameters"].push_back(name);
    }
    if (opt_) {
      nlohmann::json o;
      o["name"] = opt_->name();
      o["parameters"] = optimizer_param_names();
      o["lrs"] = nlohmann::json::array();
      for (std::size_t g = 0; g < opt_->num_groups(); ++g) o["lrs"].push_back(opt_->lr(g));
      o["state"] = nlohmann::json::object();
      for (const auto& [i, ps] : opt_->named_state()) {
        o["state"][std::to_string(i)] = ps.step;
        for (const auto& [tn, t] : ps.tensors) f.add("optim/" + std::to_string(i) + "/" + tn, t);
      }
      j["optimizer"] = std::move(o);
    }
    if (sched_) j["scheduler"] = {{"step", sched_->current_step()}, {"base_lrs", sched_->base_lrs()}};
    j["rngs"] = nlohmann::json::object();
    for (auto& [name, g] : rngs_) {
      nlohmann::json words = nlohmann::json::array();
      for (auto w : g->state()) words.push_back(detail::hex_word(w));
      j["rngs"][name] = std::move(words);
    }
    f.metadata()["format"] = checkpoint_format;
    f.metadata()["format_version"] = std::to_string(checkpoint_format_version);
    f.metadata()["checkpoint"] = j.dump();
    for (auto& [k, v] : metadata) f.metadata()["user." + k] = v;
    f.save(path);
  }

  // Restores every registered object from `path` (see the header comment for what is checked).
  checkpoint_info load(const std::string& path) {
    const auto f = safetensors_file::load(path);
    const std::string w = "checkpoint '" + path + "'";
    checkpoint_info info;
    const nlohmann::json j = read_header(f, w, info);

    for (auto& [name, e] : f.entries())
      if (e.type != dtype_of<T>())
        throw io_error(w + ": tensor '" + name + "' is " + dtype_name(e.type) + ", expected " +
                       dtype_name(dtype_of<T>()) + " (a checkpoint is loaded into the type it was saved from)");

    // ---- parameters ----
    std::set<std::string> used;
    std::vector<std::pair<variable<T>, tensor<T>>> param_values;
    for (auto& [name, v] : params_) {
      const std::string key = "param/" + name;
      if (!f.contains(key)) throw io_error(w + ": missing parameter '" + name + "'");
      const tensor_entry& e = f.at(key);
      if (e.shape != v.shape())
        throw io_error(w + ": parameter '" + name + "' has shape " + shape_str(e.shape) + ", the model's is " +
                       shape_str(v.shape()));
      param_values.emplace_back(v, f.get<T>(key));
      used.insert(key);
    }
    for (auto& n : j.at("parameters"))
      if (!f.contains("param/" + n.get<std::string>()))
        throw io_error(w + ": the parameter list names '" + n.get<std::string>() + "' but there is no tensor 'param/" +
                       n.get<std::string>() + "'");
    for (auto& key : f.names())
      if (key.rfind("param/", 0) == 0 && !used.count(key))
        throw io_error(w + ": unexpected parameter '" + key.substr(6) + "' (not registered with this checkpoint)");

    // ---- optimizer ----
    optim::state_map<T> state;
    std::vector<double> lrs;
    const bool has_opt = j.contains("optimizer");
    if (has_opt != (opt_ != nullptr))
      throw io_error(w + (has_opt ? ": holds optimizer state but no optimizer was given"
                                  : ": holds no optimizer state but an optimizer was given"));
    if (opt_) {
      const auto& o = j["optimizer"];
      const std::string name = get_string(o, "name", w + ": optimizer");
      if (name != opt_->name())
        throw io_error(w + ": optimizer is '" + name + "', the given optimizer is '" + opt_->name() + "'");
      const auto names = optimizer_param_names();
      const auto& saved = o.at("parameters");
      if (!saved.is_array() || saved.size() != names.size())
        throw io_error(w + ": optimizer has " + std::to_string(saved.is_array() ? saved.size() : 0) +
                       " parameters, the given optimizer has " + std::to_string(names.size()));
      for (std::size_t i = 0; i < names.size(); ++i)
        if (!saved[i].is_string() || saved[i].get<std::string>() != names[i])
          throw io_error(w + ": optimizer parameter " + std::to_string(i) + " is '" +
                         (saved[i].is_string() ? saved[i].get<std::string>() : saved[i].dump()) +
                         "', the given optimizer's is '" + names[i] + "' (parameters in another order?)");
      const auto& jl = o.at("lrs");
      if (!jl.is_array() || jl.size() != opt_->num_groups())
        throw io_error(w + ": optimizer lrs must list " + std::to_string(opt_->num_groups()) + " groups");
      for (auto& x : jl) {
        if (!x.is_number() || !(x.get<double>() >= 0)) throw io_error(w + ": optimizer lr " + x.dump() + " is not >= 0");
        lrs.push_back(x.get<double>());
      }
      const auto& js = o.at("state");
      if (!js.is_object()) throw io_error(w + ": optimizer state is not an object");
      for (auto it = js.begin(); it != js.end(); ++it) {
        const std::size_t i = parse_index(it.key(), names.size(), w);
        if (!it.value().is_number_unsigned() || it.value().get<std::uint64_t>() == 0)
          throw io_error(w + ": optimizer state of parameter " + it.key() + ": step count " + it.value().dump() +
                         " is not a positive integer");
        state[i].step = std::size_t(it.value().get<std::uint64_t>());
      }
      for (auto& [key, e] : f.entries()) {
        if (key.rfind("optim/", 0) != 0) continue;
        const auto slash = key.find('/', 6);
        if (slash == std::string::npos || slash + 1 == key.size())
          throw io_error(w + ": tensor '" + key + "' is not optim/<index>/<name>");
        const std::size_t i = parse_index(key.substr(6, slash - 6), names.size(), w);
        auto it = state.find(i);
        if (it == state.end())
          throw io_error(w + ": tensor '" + key + "' belongs to parameter " + std::to_string(i) +
                         ", which has no optimizer state entry");
        it->second.tensors.emplace(key.substr(slash + 1), f.get<T>(key));
        used.insert(key);
      }
    }
    for (auto& name : f.names())
      if (!used.count(name)) throw io_error(w + ": unexpected tensor '" + name + "'");

    // ---- scheduler ----
    const bool has_sched = j.contains("scheduler");
    if (has_sched != (sched_ != nullptr))
      throw io_error(w + (has_sched ? ": holds scheduler state but no scheduler was given"
                                    : ": holds no scheduler state but a scheduler was given"));
    std::size_t sched_step = 0;
    if (sched_) {
      const auto& s = j["scheduler"];
      if (!s.is_object() || !s.contains("step") || !s["step"].is_number_unsigned() || !s.contains("base_lrs") ||
          !s["base_lrs"].is_array())
        throw io_error(w + ": scheduler entry must be {step, base_lrs}");
      sched_step = std::size_t(s["step"].get<std::uint64_t>());
      std::vector<double> base;
      for (auto& x : s["base_lrs"]) {
        if (!x.is_number()) throw io_error(w + ": scheduler base_lrs holds " + x.dump());
        base.push_back(x.get<double>());
      }
      if (base != sched_->base_lrs())
        throw io_error(w + ": scheduler base lrs " + nlohmann::json(base).dump() + " differ from the given scheduler's " +
                       nlohmann::json(sched_->base_lrs()).dump() + " (build the optimizer with the same lrs)");
    }

    // ---- rngs ----
    std::vector<std::pair<rng*, rng::state_type>> rng_states;
    const auto& jr = j.at("rngs");
    if (!jr.is_object()) throw io_error(w + ": rngs is not an object");
    for (auto it = jr.begin(); it != jr.end(); ++it)
      if (!rngs_.count(it.key())) throw io_error(w + ": unexpected rng '" + it.key() + "' (not registered)");
    for (auto& [name, g] : rngs_) {
      auto it = jr.find(name);
      if (it == jr.end()) throw io_error(w + ": missing rng '" + name + "'");
      rng::state_type s{};
      if (!it->is_array() || it->size() != s.size())
        throw io_error(w + ": rng '" + name + "' must be 4 words of 16 hex digits");
      bool nonzero = false;
      for (std::size_t k = 0; k < s.size(); ++k) {
        const auto& x = (*it)[k];
        if (!x.is_string() || !detail::parse_hex_word(x.template get<std::string>(), s[k]))
          throw io_error(w + ": rng '" + name + "' word " + std::to_string(k) + " is " + x.dump() +
                         ", not 16 hex digits");
        nonzero = nonzero || s[k] != 0;
      }
      if (!nonzero) throw io_error(w + ": rng '" + name + "' has the all-zero state, which xoshiro256** cannot have");
      rng_states.emplace_back(g, s);
    }

    // ---- commit (the optimizer first: its load_state is the only step that can still refuse) ----
    if (opt_) {
      try {
        opt_->load_state(state);
      } catch (const error& e) {
        throw io_error(w + ": optimizer state does not fit the optimizer: " + e.what());
      }
      for (std::size_t g = 0; g < lrs.size(); ++g) opt_->set_lr(g, lrs[g]);
    }
    for (auto& [v, t] : param_values) std::copy(t.begin(), t.end(), v.value().begin());
    if (sched_) sched_->set_step(sched_step);  // re-applies base · factor(step) == the saved lrs
    for (auto& [g, s] : rng_states) g->set_state(s);
    return info;
  }

 private:
  // The optimizer's parameters by registered name ("#<i>" for a parameter not registered).
  std::vector<std::string> optimizer_param_names() const {
    std::vector<std::string> out;
    const auto ps = opt_->parameters();
    for (std::size_t i = 0; i < ps.size(); ++i) {
      std::string n(1, '#');  // (not "#" + ...: GCC 12 warns spuriously)
      n += std::to_string(i);
      for (auto& [name, v] : params_)
        if (v.get() == ps[i].get()) {
          n = name;
          break;
        }
      out.push_back(n);
    }
    return out;
  }

  static std::string get_string(const nlohmann::json& o, const char* key, const std::string& w) {
    if (!o.is_object() || !o.contains(key) || !o[key].is_string())
      throw io_error(w + ": missing or non-string '" + key + "'");
    return o[key].get<std::string>();
  }
  static std::size_t parse_index(const std::string& s, std::size_t n, const std::string& w) {
    std::size_t i = 0;
    const auto r = std::from_chars(s.data(), s.data() + s.size(), i);
    if (s.empty() || r.ec != std::errc() || r.ptr != s.data() + s.size() || (s.size() > 1 && s[0] == '0'))
      throw io_error(w + ": optimizer parameter index '" + s + "' is not a decimal integer");
    if (i >= n)
      throw io_error(w + ": optimizer parameter index " + s + " out of range (the optimizer has " + std::to_string(n) +
                     " parameters)");
    return i;
  }

  // The validated 'checkpoint' JSON of a file (fills info). Public for read_checkpoint_info.
 public:
  static nlohmann::json read_header(const safetensors_file& f, const std::string& w, checkpoint_info& info) {
    const auto& md = f.metadata();
    auto fmt = md.find("format");
    if (fmt == md.end() || fmt->second != checkpoint_format)
      throw io_error(w + ": not a peft checkpoint (__metadata__ format is " +
                     (fmt == md.end() ? std::string("missing") : "'" + fmt->second + "'") + ", expected '" +
                     checkpoint_format + "')");
    auto ver = md.find("format_version");
    if (ver == md.end() || ver->second != std::to_string(checkpoint_format_version))
      throw io_error(w + ": unsupported format_version " + (ver == md.end() ? std::string("(missing)") : ver->second) +
                     " (this build reads " + std::to_string(checkpoint_format_version) + ")");
    auto body = md.find("checkpoint");
    if (body == md.end()) throw io_error(w + ": missing __metadata__ entry 'checkpoint'");
    nlohmann::json j = detail::parse_json_strict(body->second, 8, w + ": entry 'checkpoint'");
    if (!j.is_object() || !j.contains("step") || !j["step"].is_number_unsigned() || !j.contains("parameters") ||
        !j["parameters"].is_array() || !j.contains("rngs") || !j.contains("dtype") || !j["dtype"].is_string())
      throw io_error(w + ": entry 'checkpoint' must hold step, dtype, parameters and rngs");
    if (j["dtype"].get<std::string>() != dtype_name(dtype_of<T>()))
      throw io_error(w + ": saved from " + j["dtype"].get<std::string>() + " tensors, loading into " +
                     dtype_name(dtype_of<T>()));
    for (auto& n : j["parameters"])
      if (!n.is_string()) throw io_error(w + ": parameter list holds " + n.dump());
    if (j.contains("optimizer") && (!j["optimizer"].is_object() || !j["optimizer"].contains("parameters") ||
                                    !j["optimizer"].contains("lrs") || !j["optimizer"].contains("state")))
      throw io_error(w + ": optimizer entry must hold name, parameters, lrs and state");
    info.step = std::size_t(j["step"].get<std::uint64_t>());
    info.format_version = checkpoint_format_version;
    for (auto& [k, v] : md)
      if (k.rfind("user.", 0) == 0) info.metadata.emplace(k.substr(5), v);
    return j;
  }

 private:
  std::vector<std::pair<std::string, variable<T>>> params_;
  optim::optimizer<T>* opt_ = nullptr;
  optim::lr_scheduler<T>* sched_ = nullptr;
  std::map<std::string, rng*> rngs_;
};

// The step and user metadata of a checkpoint file, without restoring anything (T: the type the
// checkpoint was saved from).
template <class T>
checkpoint_info read_checkpoint_info(const std::string& path) {
  // Only the header is needed; loading the file also validates the tensors' layout.
  const auto f = safetensors_file::load(path);
  checkpoint_info info;
  (void)checkpoint<T>::read_header(f, "checkpoint '" + path + "'", info);
  return info;
}

// ---- definitions: here (inline) for header-only programs; in the compiled library only in
// src/io.cpp (PEFT_UNIT_IO), so that they are defined once ----
#if !defined(PEFT_COMPILED_LIB) || defined(PEFT_UNIT_IO)
namespace detail {
PEFT_INLINE std::string hex_word(std::uint64_t w) {
  static const char* digits = "0123456789abcdef";
  std::string s(16, '0');
  for (int i = 15; i >= 0; --i, w >>= 4) s[std::size_t(i)] = digits[w & 15];
  return s;
}
PEFT_INLINE bool parse_hex_word(const std::string& s, std::uint64_t& w) {
  if (s.size() != 16) return false;
  const auto r = std::from_chars(s.data(), s.data() + s.size(), w, 16);
  return r.ec == std::errc() && r.ptr == s.data() + s.size();
}
}  // namespace detail
#endif  // !PEFT_COMPILED_LIB || PEFT_UNIT_IO

}  // namespace peft::io
