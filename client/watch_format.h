// `spillctl watch`: one screen of tiers, jobs, bandwidth and request rates,
// made from two consecutive Admin.Stats / Admin.Jobs answers. Rates are the
// deltas of spilld's counters divided by the time between the answers; the
// first screen (no previous sample) shows "-" for them. A counter that went
// down (spilld restarted, a job re-created under the same id) also shows "-".
// Pure functions of their inputs, so tests build samples by hand.
#ifndef SPILL_CLIENT_WATCH_FORMAT_H_
#define SPILL_CLIENT_WATCH_FORMAT_H_

#include <chrono>
#include <optional>
#include <string>

#include "spill/v1/spill.pb.h"

namespace spill::client {

struct WatchSample {
  v1::StatsResponse stats;
  v1::JobsResponse jobs;
  std::chrono::steady_clock::time_point at;
};

// The screen for current, with rates against previous when given. Ends with
// a newline; no ANSI escapes (the caller clears the terminal).
std::string FormatWatch(const WatchSample* previous, const WatchSample& current);

// Bytes per second as "1.5 GiB/s"; "-" when the rate is unknown.
std::string FormatRate(std::optional<double> bytes_per_second);

// (now - before) / seconds, or nullopt when seconds <= 0 or now < before.
std::optional<double> CounterRate(uint64_t before, uint64_t now, double seconds);

// What a terminal needs before each screen: cursor home, clear the screen.
inline constexpr char kClearScreen[] = "\x1b[H\x1b[2J";

}  // namespace spill::client

#endif  // SPILL_CLIENT_WATCH_FORMAT_H_
