// Human sizes and durations for flags and config files.
//
//   ParseSize("64GiB")  -> 68719476736
//   ParseSize("512MB")  -> 512000000
//   ParseDuration("30s") -> 30000 ms
#ifndef SPILL_COMMON_UNITS_H_
#define SPILL_COMMON_UNITS_H_

#include <chrono>
#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace spill {

// Accepts a non-negative integer with an optional suffix: B, K/KiB, M/MiB,
// G/GiB, T/TiB (powers of 1024) or KB, MB, GB, TB (powers of 1000), case
// insensitive. Returns InvalidArgument naming the text for anything else,
// OutOfRange on overflow.
absl::StatusOr<uint64_t> ParseSize(absl::string_view text);

// "1.5 GiB", "512 MiB", "17 B".
std::string FormatBytes(uint64_t bytes);

// Accepts an integer with a unit: ms, s, m, h ("250ms", "30s", "5m").
absl::StatusOr<std::chrono::milliseconds> ParseDuration(absl::string_view text);

}  // namespace spill

#endif  // SPILL_COMMON_UNITS_H_
