#pragma once
// The second way to use peft (README "Three ways to use it"): header-only plus one instantiation
// TU. Compile every TU of the program with -DPEFT_COMPILED_LIB, and exactly one TU as
//     #include <peft/instantiate.hpp>   // first, before any other peft header
// That TU defines what the others only declare: the same code as libpeft_compiled, so the same
// bits; it costs about as much to compile as the library (once, not per TU).
#if defined(PEFT_CONFIG_HPP_INCLUDED) && !defined(PEFT_INSTANTIATE_TEMPLATES)
#error "peft/instantiate.hpp must be included before any other peft header of its TU"
#endif
#ifndef PEFT_COMPILED_LIB
#define PEFT_COMPILED_LIB 1
#endif
#ifndef PEFT_INSTANTIATE_TEMPLATES
#define PEFT_INSTANTIATE_TEMPLATES 1
#endif
// This one TU defines every unit's non-template functions.
#define PEFT_UNIT_GEMM 1
#define PEFT_UNIT_IO 1
#include "peft/version.hpp"
#include "peft/instantiate/gemm.hpp"
#include "peft/instantiate/linalg.hpp"
#include "peft/io/io.hpp"
