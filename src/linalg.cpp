// peft::compiled: the dense decompositions (detail/decompositions.hpp) and the randomized and
// truncated SVDs and orthonormalisations built on them (detail/svd.hpp), for float and double.
#ifndef PEFT_COMPILED_LIB
#error "src/ is the compiled library: build it through CMake (PEFT_BUILD_COMPILED), which defines PEFT_COMPILED_LIB"
#endif
#include "peft/instantiate/linalg.hpp"
