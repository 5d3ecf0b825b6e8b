#include "server/busy_clock.h"

#include <gtest/gtest.h>

namespace spill::server {
namespace {

using std::chrono::milliseconds;

TEST(BusyClockTest, CountsTheUnionOfOverlappingIntervalsOnce) {
  BusyClock c;
  const BusyClock::Clock::time_point t0{};
  c.Enter(t0);                     // a: [0, 30)
  c.Enter(t0 + milliseconds(10));  // b: [10, 50)
  c.Leave(t0 + milliseconds(30));
  EXPECT_DOUBLE_EQ(c.Seconds(t0 + milliseconds(40)), 0.040);  // Still running.
  c.Leave(t0 + milliseconds(50));
  c.Enter(t0 + milliseconds(100));  // c: [100, 120), after an idle gap.
  c.Leave(t0 + milliseconds(120));
  EXPECT_DOUBLE_EQ(c.Seconds(t0 + milliseconds(500)), 0.070);
}

TEST(BusyClockTest, AnUnbalancedLeaveIsIgnored) {
  BusyClock c;
  const BusyClock::Clock::time_point t0{};
  c.Leave(t0 + milliseconds(5));
  EXPECT_EQ(c.Seconds(t0 + milliseconds(10)), 0);
  c.Enter(t0 + milliseconds(10));
  c.Leave(t0 + milliseconds(15));
  c.Leave(t0 + milliseconds(20));
  EXPECT_DOUBLE_EQ(c.Seconds(t0 + milliseconds(30)), 0.005);
}

TEST(BusyClockTest, ScopeMeasuresRealTime) {
  BusyClock c;
  const auto start = BusyClock::Clock::now();
  { BusyClock::Scope s(c); }
  const double elapsed =
      std::chrono::duration<double>(BusyClock::Clock::now() - start).count();
  EXPECT_GE(c.Seconds(), 0);
  EXPECT_LE(c.Seconds(), elapsed);
}

}  // namespace
}  // namespace spill::server
