#pragma once
// Umbrella for the nn layer: module base, layers, blocks, the Llama-style model and losses.
#include "peft/nn/module.hpp"
#include "peft/nn/linear.hpp"
#include "peft/nn/embedding.hpp"
#include "peft/nn/norm.hpp"
#include "peft/nn/mlp.hpp"
#include "peft/nn/attention.hpp"
#include "peft/nn/transformer.hpp"
#include "peft/nn/loss.hpp"
