#pragma once
// Explicit instantiation definitions of detail/decompositions.hpp and detail/svd.hpp (float,
// double). Included by peft/instantiate.hpp (src/linalg_float.cpp and linalg_double.cpp hold the
// same, one scalar type each).
#include "peft/detail/decompositions.hpp"
#include "peft/detail/svd.hpp"

#if !defined(PEFT_INSTANTIATE_TEMPLATES)
#error "peft/instantiate/linalg.hpp: include peft/instantiate.hpp (it defines PEFT_INSTANTIATE_TEMPLATES)"
#endif

namespace peft::detail {
PEFT_DETAIL_DECOMPOSITIONS(template, float)
PEFT_DETAIL_DECOMPOSITIONS(template, double)
PEFT_DETAIL_SVD(template, float)
PEFT_DETAIL_SVD(template, double)
}  // namespace peft::detail
