#pragma once
// peft.cpp: header-only parameter-efficient fine-tuning. This umbrella includes every module
// (dist/ is separate: it needs MPI); include a single header (e.g. peft/adapters/lora.hpp) to
// compile less.
#include "peft/version.hpp"

#include "peft/core/core.hpp"
#include "peft/autograd/autograd.hpp"
#include "peft/nn/nn.hpp"
#include "peft/init/init.hpp"
#include "peft/adapters/adapters.hpp"
#include "peft/optim/optim.hpp"
#include "peft/io/io.hpp"
#include "peft/merge/merge.hpp"
#include "peft/serve/serve.hpp"
