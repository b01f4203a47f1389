#pragma once
// peft.cpp: header-only parameter-efficient fine-tuning. This umbrella includes every module;
// include a single header (e.g. peft/autograd/ops/matmul.hpp) to compile less.
#include "peft/version.hpp"

#include "peft/core/core.hpp"
#include "peft/autograd/autograd.hpp"
#include "peft/nn/nn.hpp"
#include "peft/optim/optim.hpp"
