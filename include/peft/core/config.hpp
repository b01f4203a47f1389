#pragma once
#define PEFT_CONFIG_HPP_INCLUDED 1
// How peft is consumed, decided by macros (CMake sets them; see README "Three ways to use it"):
//   header-only (default):  every function is defined in the headers, as inline or as a template;
//   PEFT_COMPILED_LIB:      (usage requirement of peft::compiled) the heavy templates are declared
//                           `extern template` for float and double, and the heavy non-template
//                           functions are only declared; libpeft_compiled defines them.
//   PEFT_EXTERN_TEMPLATES:  the older spelling of PEFT_COMPILED_LIB, still accepted.
//   PEFT_INSTANTIATE_TEMPLATES: set while compiling the definitions (src/*.cpp, or a user's own
//                           instantiation TU, peft/instantiate.hpp).
// Both modes compile the same source text, so they give the same bits.
#if defined(PEFT_EXTERN_TEMPLATES) && !defined(PEFT_COMPILED_LIB)
#define PEFT_COMPILED_LIB 1
#endif

#if defined(PEFT_COMPILED_LIB) && !defined(PEFT_INSTANTIATE_TEMPLATES)
// A consumer of the compiled library: definitions of out-of-line functions are not seen.
#define PEFT_DEFINITIONS 0
#else
#define PEFT_DEFINITIONS 1
#endif

// Non-template functions that are defined out of line in compiled mode: `inline` when the
// headers hold the definition for everyone, nothing when the compiled library defines it once
// (in the one src/<unit>.cpp that defines PEFT_UNIT_<UNIT>; peft/instantiate.hpp defines all).
#if defined(PEFT_COMPILED_LIB)
#define PEFT_INLINE
#else
#define PEFT_INLINE inline
#endif
