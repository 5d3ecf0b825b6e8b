#include "client/watch_format.h"

#include <gtest/gtest.h>

#include "absl/strings/match.h"
#include "absl/strings/str_split.h"

namespace spill::client {
namespace {

using std::chrono::milliseconds;

WatchSample Sample(uint64_t acquired, uint64_t written, uint64_t count, uint64_t errors,
                   std::chrono::steady_clock::time_point at) {
  WatchSample s;
  s.at = at;
  v1::TierStats* tier = s.stats.add_tiers();
  tier->set_name("pinned");
  tier->set_capacity_bytes(uint64_t{8} << 30);
  tier->set_used_bytes(uint64_t{2} << 30);
  tier->set_free_bytes(uint64_t{6} << 30);
  tier->set_segments_total(8);
  tier->set_segments_free(5);
  v1::JobUsage* usage = tier->add_jobs();
  usage->set_job_id("llama");
  usage->set_acquired_bytes(acquired);
  usage->set_written_back_bytes(written);
  s.stats.set_bytes_out(acquired);
  s.stats.set_bytes_in(written);
  s.stats.set_uptime_ms(65'000);
  s.stats.set_version("0.1.0");
  v1::LatencyStats* op = s.stats.add_requests();
  op->set_op("acquire");
  op->set_count(count);
  op->set_errors(errors);
  op->set_p50_us(12);
  op->set_p99_us(40);
  v1::JobInfo* job = s.jobs.add_jobs();
  job->set_job_id("llama");
  job->set_state("active");
  job->set_objects(4);
  job->set_used_bytes(uint64_t{2} << 30);
  job->add_sessions();
  job->add_sessions();
  return s;
}

TEST(CounterRateTest, DeltaOverSecondsAndUnknownCases) {
  EXPECT_EQ(CounterRate(100, 300, 2.0), 100.0);
  EXPECT_FALSE(CounterRate(300, 100, 2.0).has_value());  // Counter reset.
  EXPECT_FALSE(CounterRate(0, 100, 0).has_value());
  EXPECT_EQ(FormatRate(std::nullopt), "-");
  EXPECT_EQ(FormatRate(double(uint64_t{3} << 30)), "3.0 GiB/s");
}

TEST(FormatWatchTest, FirstScreenHasNoRates) {
  auto t0 = std::chrono::steady_clock::now();
  std::string screen = FormatWatch(nullptr, Sample(1 << 20, 0, 10, 0, t0));
  EXPECT_TRUE(absl::StrContains(screen, "spilld 0.1.0 up 1m 05s")) << screen;
  EXPECT_TRUE(absl::StrContains(screen, "bandwidth: acquire -, write-back -")) << screen;
  EXPECT_TRUE(absl::StrContains(screen, "pinned")) << screen;
  EXPECT_TRUE(absl::StrContains(screen, "5/8")) << screen;
  EXPECT_TRUE(absl::StrContains(screen, "25.0%")) << screen;
  EXPECT_EQ(screen.find('\x1b'), std::string::npos) << "escapes belong to the caller";
}

TEST(FormatWatchTest, RatesComeFromCounterDeltas) {
  auto t0 = std::chrono::steady_clock::now();
  WatchSample before = Sample(uint64_t{1} << 30, 0, 100, 0, t0);
  WatchSample after =
      Sample(uint64_t{3} << 30, uint64_t{1} << 30, 300, 4, t0 + milliseconds(2000));
  std::string screen = FormatWatch(&before, after);
  // 2 GiB acquired and 1 GiB written back in 2 s.
  EXPECT_TRUE(absl::StrContains(screen, "bandwidth: acquire 1.0 GiB/s, write-back 512.0 MiB/s"))
      << screen;
  EXPECT_TRUE(absl::StrContains(screen, "(rates over 2.0s)")) << screen;
  // Per job: the same rates in the job row, with its sessions and objects.
  bool job_row = false, op_row = false;
  for (absl::string_view line : absl::StrSplit(screen, '\n')) {
    if (absl::StartsWith(line, "llama")) {
      job_row = absl::StrContains(line, "active") && absl::StrContains(line, "1.0 GiB/s") &&
                absl::StrContains(line, "512.0 MiB/s") && absl::StrContains(line, "  2  ") &&
                absl::StrContains(line, "  4  ");
    }
    if (absl::StartsWith(line, "acquire")) {
      op_row = absl::StrContains(line, "100.0") && absl::StrContains(line, "2.0");
    }
  }
  EXPECT_TRUE(job_row) << screen;
  EXPECT_TRUE(op_row) << screen;
}

TEST(FormatWatchTest, ResetCountersShowUnknownNotNegative) {
  auto t0 = std::chrono::steady_clock::now();
  WatchSample before = Sample(uint64_t{5} << 30, 100, 500, 0, t0);
  WatchSample after = Sample(1024, 0, 3, 0, t0 + milliseconds(1000));  // Job re-created.
  std::string screen = FormatWatch(&before, after);
  EXPECT_TRUE(absl::StrContains(screen, "bandwidth: acquire -, write-back -")) << screen;
}

TEST(FormatWatchTest, NoJobsNoRequests) {
  WatchSample s;
  s.at = std::chrono::steady_clock::now();
  std::string screen = FormatWatch(nullptr, s);
  EXPECT_TRUE(absl::StrContains(screen, "no tiers")) << screen;
  EXPECT_TRUE(absl::StrContains(screen, "no jobs")) << screen;
  EXPECT_TRUE(absl::StrContains(screen, "no requests yet")) << screen;
}

}  // namespace
}  // namespace spill::client
