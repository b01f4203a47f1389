// Smallest useful peft program, built against an installed peft through find_package(peft).
// Exits 0 only when the forward value and the gradients of y = a + b are right.
#include <peft/peft.hpp>

#include <cmath>
#include <cstdio>

int main() {
  peft::rng g(42);
  peft::tensor<float> ta = peft::randn<float>({2, 3}, g);
  auto a = peft::parameter(ta);
  auto b = peft::constant(peft::full<float>({3}, 0.5f));  // broadcast over rows
  auto y = a + b;
  y.backward(peft::ones<float>({2, 3}));

  bool ok = y.shape() == peft::shape_t{2, 3} && a.has_grad() && !b.has_grad();
  for (std::size_t i = 0; ok && i < ta.size(); ++i) {
    ok = std::fabs(y.value().data()[i] - (ta.data()[i] + 0.5f)) < 1e-6f &&
         a.grad().data()[i] == 1.0f;
  }
  std::printf("peft %d.%d.%d via find_package: %s\n", peft::version_major, peft::version_minor,
              peft::version_patch, ok ? "ok" : "WRONG");
  return ok ? 0 : 1;
}
