#pragma once
// peft/io: safetensors files, Hugging Face PEFT adapter directories (adapter_config.json +
// adapter_model.safetensors), whole-model state dicts, GGUF (llama.cpp), NumPy .npy arrays and
// training checkpoints. Needs nlohmann_json (header-only; the CMake target peft::peft links it).
#include "peft/io/adapter_config.hpp"
#include "peft/io/checkpoint.hpp"
#include "peft/io/gguf.hpp"
#include "peft/io/gguf_llama.hpp"
#include "peft/io/npy.hpp"
#include "peft/io/peft_dir.hpp"
#include "peft/io/safetensors.hpp"
#include "peft/io/state_dict.hpp"
