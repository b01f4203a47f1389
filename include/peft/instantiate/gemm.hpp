#pragma once
// Explicit instantiation definitions of detail/gemm.hpp (float, double). Included by
// src/gemm.cpp and peft/instantiate.hpp only.
#include "peft/detail/gemm.hpp"

#if !defined(PEFT_INSTANTIATE_TEMPLATES)
#error "peft/instantiate/gemm.hpp: include peft/instantiate.hpp (it defines PEFT_INSTANTIATE_TEMPLATES)"
#endif

namespace peft::detail {
PEFT_DETAIL_GEMM(template, float)
PEFT_DETAIL_GEMM(template, double)
}  // namespace peft::detail
