// peft::compiled: the non-template code of peft/io (file readers and writers, GGUF tables, JSON).
#ifndef PEFT_COMPILED_LIB
#error "src/ is the compiled library: build it through CMake (PEFT_BUILD_COMPILED), which defines PEFT_COMPILED_LIB"
#endif
#define PEFT_UNIT_IO 1  // this TU defines the io headers' non-template functions
#include "peft/io/io.hpp"
