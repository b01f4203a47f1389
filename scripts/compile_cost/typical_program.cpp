// The "typical program" of scripts/compile_cost.sh: what a new user writes first. The umbrella
// header; an MLP adapted with LoRA (PiSSA init), DoRA and VeRA; AdamW and GaLore; a PEFT adapter
// directory saved and loaded back. It is compiled (and run by the consumer tests), not timed.
#include <peft/peft.hpp>

#include <cstdio>
#include <filesystem>
#include <memory>

using namespace peft;
using peft::io::load_peft_adapter;
using peft::io::make_adapter_config;
using peft::io::save_peft_adapter;

namespace {

template <class Make>
float train(Make make_adapter, bool use_galore, const char* name) {
  rng g(0);
  auto model = std::make_shared<nn::gelu_mlp<float>>(16, 32, 4, g);
  inject_options opt;
  opt.targets.names = {"fc1", "fc2"};
  inject_adapters<float>(*model, opt, 4, 8.0, make_adapter);
  auto x = constant(randn<float>({32, 16}, g));
  auto y = constant(randn<float>({32, 4}, g));
  std::unique_ptr<optim::optimizer<float>> opt_ptr;
  if (use_galore) {
    optim::galore_options go;
    go.rank = 2;
    opt_ptr = std::make_unique<optim::projected<optim::adamw<float>, optim::galore_projector<float>>>(
        model->trainable_parameters(), optim::adamw_options{.lr = 1e-2}, go, optim::projected_options{});
  } else {
    opt_ptr = std::make_unique<optim::adamw<float>>(model->trainable_parameters(),
                                                    optim::adamw_options{.lr = 1e-2});
  }
  float last = 0;
  for (int step = 0; step < 20; ++step) {
    auto loss = nn::mse_loss(model->forward(x), y);
    opt_ptr->zero_grad();
    loss.backward();
    opt_ptr->step();
    last = loss.item();
  }
  std::printf("%-6s mse %.4f\n", name, last);
  return last;
}

}  // namespace

int main() {
  lora_config lc;
  lc.r = 4;
  lc.alpha = 8;
  train([&](const layer_info<float>& i) -> std::shared_ptr<adapter<float>> {
          return std::make_shared<lora<float>>(i.in, i.out, lc, init::pissa{}, &i.base->weight.value());
        }, false, "pissa");
  train([&](const layer_info<float>& i) -> std::shared_ptr<adapter<float>> {
          return dora_lora<float>(i.in, i.out, lc, i.base->weight.value());
        }, true, "dora");
  auto shared = std::make_shared<vera_shared<float>>(4, 32, 32, 7);
  train([&](const layer_info<float>& i) -> std::shared_ptr<adapter<float>> {
          vera_config vc;
          vc.r = 4;
          return std::make_shared<vera<float>>(i.in, i.out, shared, vc);
        }, false, "vera");

  // Save a LoRA adapter as PEFT does, and load it into a fresh model.
  rng g(1);
  auto model = std::make_shared<nn::gelu_mlp<float>>(16, 32, 4, g);
  inject_options opt;
  opt.targets.names = {"fc1", "fc2"};
  inject_lora<float>(*model, lc, opt);
  const auto dir = std::filesystem::temp_directory_path() / "peft_typical_program";
  save_peft_adapter(dir.string(), *model, make_adapter_config(*model));
  auto fresh = std::make_shared<nn::gelu_mlp<float>>(16, 32, 4, g);
  const auto r = load_peft_adapter(dir.string(), *fresh);
  std::filesystem::remove_all(dir);
  std::printf("loaded %zu adapted layers\n", r.layers.size());
  return r.layers.size() == 2 ? 0 : 1;
}
