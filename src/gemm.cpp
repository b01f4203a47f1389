// peft::compiled: the GEMM entry point (detail/gemm.hpp) for float and double.
#ifndef PEFT_COMPILED_LIB
#error "src/ is the compiled library: build it through CMake (PEFT_BUILD_COMPILED), which defines PEFT_COMPILED_LIB"
#endif
#define PEFT_UNIT_GEMM 1  // this TU defines gemm.hpp's non-template functions
#include "peft/instantiate/gemm.hpp"
