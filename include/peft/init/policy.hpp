#pragma once
// What an initialisation policy sees. A policy is a type with
//   void operator()(init_target<T>& t) const
// that fills A [r, in] and B [out, r] and may rewrite the base weight W (PiSSA keeps the
// residual in W). Policies that need data (LoRA-GA, EVA) take it in their constructor.
#include <concepts>

#include "peft/core/random.hpp"
#include "peft/core/tensor.hpp"

namespace peft::init {

template <class T>
struct init_target {
  tensor<T>& A;     // [r, in]
  tensor<T>& B;     // [out, r]
  tensor<T>* W;     // base weight [out, in]; nullptr when the caller has none
  double scaling;   // the adapter's scale s (Δ = s·B·A)
  rng& g;
};

// `void` return: xtensor containers also have a variadic operator() (element access) that would
// otherwise satisfy the concept and steal overloads meant for tensors.
template <class P, class T>
concept lora_init = requires(const P& p, init_target<T>& t) {
  { p(t) } -> std::same_as<void>;
};

// Helper for policies that need the base weight.
template <class T>
tensor<T>& require_base(init_target<T>& t, const char* policy) {
  if (!t.W) throw value_error(std::string(policy) + ": this init needs the base weight W");
  return *t.W;
}

}  // namespace peft::init
