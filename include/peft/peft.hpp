#pragma once
// peft.cpp: parameter-efficient fine-tuning. This umbrella includes what most programs use: core,
// autograd, nn, init, adapters, optim and io. Merging (peft/merge/merge.hpp), serving many adapters
// (peft/serve/serve.hpp) and data-parallel training (peft/dist/dist.hpp, needs MPI) are included
// on their own; a single header (e.g. peft/adapters/lora.hpp) compiles less still.
#include "peft/version.hpp"

#include "peft/core/core.hpp"
#include "peft/autograd/autograd.hpp"
#include "peft/nn/nn.hpp"
#include "peft/init/init.hpp"
#include "peft/adapters/adapters.hpp"
#include "peft/optim/optim.hpp"
#include "peft/io/io.hpp"
