// peft::compiled: the dense decompositions (detail/decompositions.hpp) and the randomized and
// truncated SVDs and orthonormalisations built on them (detail/svd.hpp) for float (one TU per
// scalar type: they are the library's longest compiles, and so build in parallel).
#ifndef PEFT_COMPILED_LIB
#error "src/ is the compiled library: build it through CMake (PEFT_BUILD_COMPILED), which defines PEFT_COMPILED_LIB"
#endif
#include "peft/detail/decompositions.hpp"
#include "peft/detail/svd.hpp"

namespace peft::detail {
PEFT_DETAIL_DECOMPOSITIONS(template, float)
PEFT_DETAIL_SVD(template, float)
}  // namespace peft::detail
