#pragma once
// Single source of truth for the version; CMakeLists.txt parses these three lines.
#define PEFT_VERSION_MAJOR 0
#define PEFT_VERSION_MINOR 1
#define PEFT_VERSION_PATCH 0

namespace peft {
inline constexpr int version_major = PEFT_VERSION_MAJOR;
inline constexpr int version_minor = PEFT_VERSION_MINOR;
inline constexpr int version_patch = PEFT_VERSION_PATCH;
}  // namespace peft
