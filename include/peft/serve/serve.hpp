#pragma once
// Serving many adapters at once: per-row (per-sequence) adapters in one batch, and a registry
// that loads, caches and hot-swaps them by name.
#include "peft/serve/served_adapter.hpp"  // layer_adapter, served_adapter: adapters in serving form
#include "peft/serve/mixed_batch.hpp"     // mixed_linear_forward: one Linear, an adapter per row
#include "peft/serve/mixed_linear.hpp"    // mixed_linear module, adapter_batch, forward_with_adapters
#include "peft/serve/adapter_files.hpp"   // PEFT directories and GGUF LoRA files -> served_adapter
#include "peft/serve/registry.hpp"        // adapter_registry: budget, LRU, pinning, thread-safe
