// peft convert <adapter dir> <out.gguf>     PEFT LoRA directory -> llama.cpp GGUF LoRA adapter
// peft convert <adapter.gguf> <out dir>     llama.cpp GGUF LoRA adapter -> PEFT LoRA directory
// The direction follows the input (a directory or a GGUF file). Names follow io/gguf_llama.hpp's
// llama mapping (layers.N.self_attn.q_proj <-> blk.N.attn_q, ...); PEFT paths may carry Hugging
// Face's "model." prefix (LlamaForCausalLM), which is dropped on the way to GGUF and added back
// with --prefix. As in io::lora_to_gguf, each module's own scale s_m (alpha_m / r_m, rsLoRA's
// alpha_m / sqrt(r_m), rank_pattern / alpha_pattern) is folded into B, B_file = B·s_m·r_m/alpha_file,
// because llama.cpp applies alpha_file / r_m with the file's single alpha; and the rows of q_proj /
// k_proj B are permuted to GGUF's interleaved RoPE order, which needs the head counts (--heads,
// --kv-heads, or --base model.gguf). With one alpha and no rsLoRA the round trip is exact.
// DoRA and VeRA have no llama.cpp LoRA form here (DoRA is not low-rank); merge them instead.
#include <cmath>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>

#include "cli_model.hpp"
#include "commands.hpp"
#include "peft/io/gguf.hpp"
#include "peft/io/gguf_llama.hpp"

namespace {
struct convert_args {
  std::string input, output;
  std::size_t heads = 0, kv_heads = 0;
  std::string base_gguf, prefix, name, type = "f32";
  std::optional<double> alpha;
};

// (n_heads, n_kv_heads) from the flags or the base GGUF; 0 when unknown.
std::pair<std::size_t, std::size_t> head_counts(const convert_args& a) {
  if (!a.base_gguf.empty()) {
    const auto f = peft::io::gguf_file::load(a.base_gguf);
    peft::io::detail::expect_architecture(f);
    const std::size_t h = peft::io::detail::gguf_count(f, "llama.attention.head_count", true);
    const std::size_t kv = peft::io::detail::gguf_count(f, "llama.attention.head_count_kv", false, h);
    if (a.heads && a.heads != h)
      throw peft::io_error("--heads " + std::to_string(a.heads) + " contradicts '" + a.base_gguf + "' (head_count " +
                           std::to_string(h) + ")");
    return {h, kv};
  }
  return {a.heads, a.kv_heads ? a.kv_heads : a.heads};
}

// Heads of the RoPE rows of a module (HF path without "model."), or 0 when it has none.
std::size_t rope_heads_of(const std::string& hf_path, const convert_args& a, const std::string& file_for_msg) {
  const bool q = peft_cli::ends_with(hf_path, ".self_attn.q_proj"), k = peft_cli::ends_with(hf_path, ".self_attn.k_proj");
  if (!q && !k) return 0;
  const auto [h, kv] = head_counts(a);
  if (h == 0)
    throw peft::io_error("'" + file_for_msg + "' adapts '" + hf_path +
                         "', whose rows GGUF permutes per attention head (RoPE order): give --heads (and "
                         "--kv-heads for grouped-query attention) or --base model.gguf");
  return q ? h : kv;
}

peft::io::ggml_type ggml_of(const std::string& t) {
  if (t == "f16") return peft::io::ggml_type::F16;
  if (t == "bf16") return peft::io::ggml_type::BF16;
  return peft::io::ggml_type::F32;
}
peft::io::dtype st_of(const std::string& t) {
  if (t == "f16") return peft::io::dtype::F16;
  if (t == "bf16") return peft::io::dtype::BF16;
  return peft::io::dtype::F32;
}

void peft_to_gguf(const convert_args& a) {
  const auto dir = peft_cli::read_adapter_dir(a.input);
  const auto& c = dir.config;
  if (!c.is_lora())
    throw peft::io_error("'" + dir.config_path + "': peft_type " + c.peft_type +
                         " cannot be converted to a llama.cpp LoRA adapter here (merge it with 'peft merge')");
  if (c.use_dora)
    throw peft::io_error("'" + dir.config_path +
                         "': DoRA (use_dora = true) is not low-rank, so llama.cpp's LoRA format cannot hold it; "
                         "merge it into the base with 'peft merge'");
  if (!dir.saved.empty())
    throw peft::io_error("'" + dir.weights_path + "': modules_to_save tensors (" + dir.saved.begin()->first +
                         ", ...) have no place in a llama.cpp LoRA adapter");
  const auto tree = peft_cli::build_adapted_model(dir, nullptr, false);

  std::vector<peft::io::gguf_lora_factor<double>> items;
  for (auto& [path, al] : peft::adapted_layers<double>(*tree)) {
    const auto* l = dynamic_cast<const peft::lora<double>*>(&al->get_adapter());
    if (!l) throw peft::io_error("module '" + path + "' is not a LoRA adapter");
    std::string hf = path;
    auto g = peft::io::gguf_llama_name(hf);
    if (!g && hf.rfind("model.", 0) == 0) {
      hf = hf.substr(6);
      g = peft::io::gguf_llama_name(hf);
    }
    if (!g || hf == "embed_tokens" || hf == "norm" || peft_cli::ends_with(hf, "layernorm"))
      throw peft::io_error("'" + a.input + "': module '" + path +
                           "' has no llama GGUF LoRA name (layers.N.self_attn.{q,k,v,o}_proj, "
                           "layers.N.mlp.{gate,up,down}_proj or lm_head, optionally under 'model.')");
    peft::io::gguf_lora_factor<double> x;
    x.name = *g + ".weight";
    x.B = peft::as_matrix(l->lora_B.value());
    x.A = peft::as_matrix(l->lora_A.value());
    x.natural = l->scaling() * double(l->rank());
    x.rope_heads = rope_heads_of(hf, a, a.input);
    items.push_back(std::move(x));
  }
  if (a.alpha && (!std::isfinite(*a.alpha) || *a.alpha == 0.0))
    throw peft::io_error("--alpha must be finite and non-zero (llama.cpp reads 0 as 'no scaling')");
  peft::io::gguf_lora_options o;
  o.alpha = a.alpha;
  o.name = a.name.empty() ? std::filesystem::path(a.input).filename().string() : a.name;
  o.weight_type = ggml_of(a.type);
  peft::io::gguf_file f;
  try {
    f = peft::io::lora_factors_to_gguf(items, o);
  } catch (const peft::shape_error& e) {
    throw peft::io_error(e.what());
  }
  const float alpha_f = f.get<float>("adapter.lora.alpha");
  f.save(a.output);
  std::cout << "wrote " << items.size() << " LoRA module(s) to '" << a.output << "' (adapter.lora.alpha " << alpha_f
            << ")\n";
}

void gguf_to_peft(const convert_args& a) {
  const auto f = peft::io::gguf_file::load(a.input);
  const std::string w = "gguf '" + a.input + "'";
  peft::io::detail::expect_architecture(f);
  auto str_is = [&](const char* key, const char* want) {
    const auto* v = f.find(key);
    return v && v->type() == peft::io::gguf_value_type::string && v->get<std::string>() == want;
  };
  if (!str_is("general.type", "adapter")) throw peft::io_error(w + ": general.type is not 'adapter'");
  if (!str_is("adapter.type", "lora")) throw peft::io_error(w + ": adapter.type is not 'lora'");
  double alpha = 0;
  if (const auto* v = f.find("adapter.lora.alpha")) {
    if (v->type() != peft::io::gguf_value_type::float32)
      throw peft::io_error(w + ": adapter.lora.alpha is " + v->type_str() + ", expected FLOAT32");
    alpha = v->get<float>();
    if (!std::isfinite(alpha)) throw peft::io_error(w + ": adapter.lora.alpha is not finite");
  }
  struct pair_t {
    std::string a, b;
  };
  std::map<std::string, pair_t> pairs;  // HF path (no prefix) -> tensor names
  for (auto& [name, t] : f.tensors()) {
    const bool is_a = peft_cli::ends_with(name, ".lora_a"), is_b = peft_cli::ends_with(name, ".lora_b");
    if (!is_a && !is_b) throw peft::io_error(w + ": tensor '" + name + "' is neither .lora_a nor .lora_b");
    const auto hf = peft::io::hf_llama_name(name.substr(0, name.size() - 7));
    if (!hf || !peft_cli::ends_with(*hf, ".weight"))
      throw peft::io_error(w + ": tensor '" + name + "' names no llama weight");
    if (t.ne.size() != 2 || !peft::io::ggml_type_decodable(t.type))
      throw peft::io_error(w + ": tensor '" + name + "' must be a 2-D float tensor, is " +
                           peft::io::ggml_type_name(t.type) + " ne " + peft::shape_str(t.ne));
    auto& p = pairs[hf->substr(0, hf->size() - 7)];
    (is_a ? p.a : p.b) = name;
  }
  if (pairs.empty()) throw peft::io_error(w + ": no LoRA tensors");

  auto tree = std::make_shared<peft_cli::tree_module>();
  std::map<std::string, std::pair<peft::tensor<double>, peft::tensor<double>>> ab;  // path -> (A, B)
  peft::inject_options io;
  for (auto& [hf, p] : pairs) {
    if (p.a.empty() || p.b.empty())
      throw peft::io_error(w + ": LoRA pair for '" + hf + "' is missing its " + (p.a.empty() ? "lora_a" : "lora_b"));
    const auto& ta = f.tensor_at(p.a);
    const auto& tb = f.tensor_at(p.b);
    // lora_a ne = [in, r], lora_b ne = [r, out] (llama.cpp's layout).
    if (ta.ne[1] != tb.ne[0] || ta.ne[1] == 0 || ta.ne[0] == 0 || tb.ne[1] == 0)
      throw peft::io_error(w + ": '" + p.a + "' ne " + peft::shape_str(ta.ne) + " and '" + p.b + "' ne " +
                           peft::shape_str(tb.ne) + " are not [in, r] and [r, out]");
    peft::tensor<double> A = f.get_tensor<double>(p.a), B = f.get_tensor<double>(p.b);
    if (const std::size_t h = rope_heads_of(hf, a, a.input)) {
      try {
        B = peft::io::permute_rope_rows(B, h, false);
      } catch (const peft::error& e) {
        throw peft::io_error(w + ": '" + p.b + "': " + e.what());
      }
    }
    const std::string path = a.prefix + hf;
    tree->put_linear(path, peft::zeros<double>({B.shape()[0], A.shape()[1]}), std::nullopt);
    io.targets.names.push_back(path);
    ab.emplace(path, std::pair{std::move(A), std::move(B)});
  }
  peft::inject_adapters<double>(*tree, io, 1, 1.0, [&](const peft::layer_info<double>& info) {
    auto& [A, B] = ab.at(info.path);
    peft::lora_config cfg;
    cfg.r = A.shape()[0];
    cfg.alpha = alpha == 0 ? double(cfg.r) : alpha;  // llama.cpp: no alpha means scale 1
    auto l = std::make_shared<peft::lora<double>>(info.in, info.out, cfg);
    l->lora_A.value() = A;
    l->lora_B.value() = B;
    return l;
  });
  auto config = peft::io::make_adapter_config<double>(*tree);
  peft::io::save_peft_adapter<double>(a.output, *tree, config, st_of(a.type));
  std::cout << "wrote " << pairs.size() << " LoRA module(s) to '" << a.output << "' (r " << config.r << ", lora_alpha "
            << config.lora_alpha << ")\n";
}

void run_convert(convert_args a) {
  if (!a.prefix.empty() && a.prefix.back() != '.') a.prefix += '.';
  std::error_code ec;
  if (std::filesystem::is_directory(a.input, ec)) return peft_to_gguf(a);
  std::ifstream in(a.input, std::ios::binary);
  char magic[4] = {};
  if (!in || !in.read(magic, 4) || std::string(magic, 4) != "GGUF")
    throw peft::io_error("'" + a.input + "' is neither a PEFT adapter directory nor a GGUF file" +
                         (in ? "" : " (cannot open it)"));
  gguf_to_peft(a);
}
}  // namespace

void register_convert(CLI::App& app) {
  auto* sub = app.add_subcommand(
      "convert", "Convert a PEFT LoRA directory to a llama.cpp GGUF LoRA adapter, or back (direction from the input).");
  auto a = std::make_shared<convert_args>();
  sub->add_option("input", a->input, "A PEFT adapter directory (-> GGUF) or a GGUF LoRA adapter file (-> PEFT).")
      ->required();
  sub->add_option("output", a->output, "The .gguf file or the adapter directory to write (atomically).")->required();
  sub->add_option("--heads", a->heads,
                  "Attention heads of the model (needed when q_proj / k_proj are adapted: GGUF permutes their "
                  "rows per head).");
  sub->add_option("--kv-heads", a->kv_heads, "Key/value heads (grouped-query attention; default: --heads).");
  sub->add_option("--base", a->base_gguf, "A GGUF llama model to read the head counts from (instead of --heads).");
  sub->add_option("--alpha", a->alpha,
                  "To GGUF: adapter.lora.alpha (default: s·r of the first module, which keeps that module's B exact).");
  sub->add_option("--type", a->type, "Tensor type written: f32 (default), f16 or bf16.")
      ->check(CLI::IsMember({"f32", "f16", "bf16"}));
  sub->add_option("--name", a->name, "To GGUF: general.name (default: the input's name).");
  sub->add_option("--prefix", a->prefix,
                  "To PEFT: prefix of the module paths, e.g. 'model.' for Hugging Face LlamaForCausalLM "
                  "(default: none, peft.cpp's nn::llama paths 'layers.N...').");
  sub->callback([a] { peft_cli::run("convert", [&] { run_convert(*a); }); });
}
