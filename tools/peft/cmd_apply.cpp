// peft apply --base base.safetensors [--adapter DIR] --module NAME --input x.npy --output y.npy
// Runs one Linear layer, y = x·Wᵀ + b, with W = <NAME>.weight [out, in] and the optional bias
// <NAME>.bias [out] from the base file, and, when an adapter directory is given, with its adapter
// for NAME (the same forward as training, in eval mode: no dropout). x is any [..., in] array
// ('<f2', '<f4' or '<f8'); y is [..., out], in x's dtype unless --dtype says otherwise. Computed
// in double.
#include <string>

#include "cli_model.hpp"
#include "commands.hpp"
#include "peft/autograd/variable.hpp"
#include "peft/io/npy.hpp"

namespace {
struct apply_args {
  std::string base, adapter, module, input, output, dtype = "same";
};

void run_apply(const apply_args& a) {
  const auto base = peft::io::safetensors_file::load(a.base);
  auto xa = peft::io::read_npy(a.input);
  const auto x = peft::io::npy_to_tensor<double>(xa);

  std::shared_ptr<peft_cli::tree_module> tree;
  std::shared_ptr<peft::nn::module<double>> layer;
  if (!a.adapter.empty()) {
    const auto dir = peft_cli::read_adapter_dir(a.adapter);
    if (!dir.modules.count(a.module)) {
      std::string known;
      for (auto& m : dir.modules) known += (known.empty() ? "" : ", ") + m;
      throw peft::io_error("adapter '" + a.adapter + "' has no adapter for module '" + a.module + "' (it adapts " +
                           known + ")");
    }
    tree = peft_cli::build_adapted_model(dir, &base, /*with_bias=*/true);
    layer = tree->find_module(a.module);
  } else {
    tree = std::make_shared<peft_cli::tree_module>();
    auto w = peft_cli::base_tensor(base, a.module + ".weight", 2, "the weight of --module");
    std::optional<peft::tensor<double>> b;
    if (base.contains(a.module + ".bias")) b = peft_cli::base_tensor(base, a.module + ".bias", 1, "its bias");
    tree->put_linear(a.module, std::move(w), std::move(b));
    tree->eval();
    layer = tree->find_module(a.module);
  }
  auto* unary = dynamic_cast<peft::nn::unary_module<double>*>(layer.get());
  if (!unary) throw peft::io_error("module '" + a.module + "' is not a layer");

  std::size_t in = 0;
  if (auto* l = dynamic_cast<peft::nn::linear<double>*>(unary)) in = l->in_features();
  if (auto* l = dynamic_cast<peft::adapted_linear<double>*>(unary)) in = l->in_features();
  if (x.dimension() == 0 || x.shape().back() != in)
    throw peft::io_error("npy '" + a.input + "': input has shape " + peft::shape_str(x.shape()) +
                         ", module '" + a.module + "' expects [..., " + std::to_string(in) + "]");

  peft::no_grad_guard ng;
  const auto y = unary->forward(peft::variable<double>(x));
  peft::io::npy_dtype out = xa.dtype;
  if (a.dtype == "f2") out = peft::io::npy_dtype::f2;
  if (a.dtype == "f4") out = peft::io::npy_dtype::f4;
  if (a.dtype == "f8") out = peft::io::npy_dtype::f8;
  peft::io::save_npy(a.output, y.value(), out);
}
}  // namespace

void register_apply(CLI::App& app) {
  auto* sub = app.add_subcommand("apply", "Run one Linear layer (with its adapter) on an .npy input.");
  auto a = std::make_shared<apply_args>();
  sub->add_option("--base", a->base,
                  "Base weights (.safetensors) holding '<module>.weight' [out, in] and optionally '<module>.bias' [out].")
      ->required();
  sub->add_option("--adapter", a->adapter,
                  "PEFT adapter directory; its adapter for --module is applied (LoRA, rsLoRA, DoRA, VeRA). "
                  "Omit to run the base layer alone.");
  sub->add_option("--module", a->module, "Module path of the layer, e.g. model.layers.0.self_attn.q_proj.")->required();
  sub->add_option("--input", a->input, "Input .npy of shape [..., in] ('<f2', '<f4' or '<f8', C order).")->required();
  sub->add_option("--output", a->output, "Output .npy of shape [..., out], written atomically.")->required();
  sub->add_option("--dtype", a->dtype, "Output dtype: same (as the input), f2, f4 or f8.")
      ->check(CLI::IsMember({"same", "f2", "f4", "f8"}));
  sub->callback([a] { peft_cli::run("apply", [&] { run_apply(*a); }); });
}
