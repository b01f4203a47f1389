// Compiled once into each of peft's own executables: the explicit instantiations that every other
// translation unit only declares (PEFT_EXTERN_TEMPLATES; see include/peft/detail/decompositions.hpp).
// A user's project can do the same: compile its TUs with -DPEFT_EXTERN_TEMPLATES and add this file.
#define PEFT_INSTANTIATE_TEMPLATES
#include "peft/detail/decompositions.hpp"
