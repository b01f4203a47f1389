// The same program built the three ways of consuming peft (header-only; peft::compiled;
// header-only plus one instantiation TU). It trains a LoRA with a PiSSA init (randomized SVD),
// takes GaLore steps (SVD refresh) and runs the GEMM entry point, then prints the bits of the
// results as hex. run_consumer.cmake checks that the three outputs are identical.
#include <peft/peft.hpp>

#include <cstdint>
#include <cstdio>
#include <cstring>

namespace {
std::uint64_t fnv1a(const float* p, std::size_t n, std::uint64_t h = 1469598103934665603ull) {
  for (std::size_t i = 0; i < n; ++i) {
    std::uint32_t u;
    std::memcpy(&u, p + i, 4);
    for (int b = 0; b < 4; ++b) h = (h ^ ((u >> (8 * b)) & 0xff)) * 1099511628211ull;
  }
  return h;
}
}  // namespace

int main() {
  using namespace peft;
  rng g(3);
  auto model = std::make_shared<nn::gelu_mlp<float>>(24, 48, 6, g);
  inject_options opt;
  opt.targets.names = {"fc1", "fc2"};
  lora_config lc;
  lc.r = 4;
  lc.alpha = 8;
  lc.seed = 11;
  inject_lora<float>(*model, lc, opt, init::pissa::fast(2));
  auto x = constant(randn<float>({40, 24}, g));
  auto y = constant(randn<float>({40, 6}, g));
  optim::galore_options go;
  go.rank = 3;
  go.update_proj_gap = 4;
  optim::projected<optim::adamw<float>, optim::galore_projector<float>> opt_g(
      model->trainable_parameters(), optim::adamw_options{.lr = 1e-2}, go, optim::projected_options{});
  float loss_v = 0;
  for (int step = 0; step < 10; ++step) {
    auto loss = nn::mse_loss(model->forward(x), y);
    opt_g.zero_grad();
    loss.backward();
    opt_g.step();
    loss_v = loss.item();
  }
  std::uint64_t h = 1469598103934665603ull;
  for (auto& [name, p] : model->named_parameters()) h = fnv1a(p.value().data(), p.value().size(), h);
  h = fnv1a(&loss_v, 1, h);
  std::printf("%016llx\n", static_cast<unsigned long long>(h));
  return 0;
}
