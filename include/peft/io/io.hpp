#pragma once
// peft/io: safetensors files, Hugging Face PEFT adapter directories (adapter_config.json +
// adapter_model.safetensors) and whole-model state dicts. Needs nlohmann_json (header-only; the
// CMake target peft::io links it).
#include "peft/io/adapter_config.hpp"
#include "peft/io/gguf.hpp"
#include "peft/io/gguf_llama.hpp"
#include "peft/io/peft_dir.hpp"
#include "peft/io/safetensors.hpp"
#include "peft/io/state_dict.hpp"
