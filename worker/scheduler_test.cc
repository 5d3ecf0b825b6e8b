#include "worker/scheduler.h"

#include <cmath>

#include "gtest/gtest.h"

namespace spill::worker {
namespace {

SchedulerConfig Warmup(SchedulerType type, WarmupType warmup_type) {
  SchedulerConfig c;
  c.type = type;
  c.warmup_min_lr = 1e-5;
  c.warmup_max_lr = 1e-3;
  c.warmup_num_steps = 10;
  c.total_num_steps = 30;
  c.warmup_type = warmup_type;
  return c;
}

TEST(LrScheduleTest, NoSchedulerIsTheOptimizerRate) {
  auto s = LrSchedule::Create(SchedulerConfig{}, 3e-4);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_DOUBLE_EQ(s->LrAt(0), 3e-4);
  EXPECT_DOUBLE_EQ(s->LrAt(1000), 3e-4);
}

TEST(LrScheduleTest, WarmupLrLogMatchesDeepSpeed) {
  auto s = LrSchedule::Create(Warmup(SchedulerType::kWarmupLR, WarmupType::kLog), 0);
  ASSERT_TRUE(s.ok()) << s.status();
  // DeepSpeed: min + (max - min) * log(i + 1) / log(warmup).
  EXPECT_DOUBLE_EQ(s->LrAt(0), 1e-5);
  EXPECT_NEAR(s->LrAt(4), 1e-5 + (1e-3 - 1e-5) * std::log(5.0) / std::log(10.0), 1e-15);
  EXPECT_DOUBLE_EQ(s->LrAt(10), 1e-3);
  EXPECT_DOUBLE_EQ(s->LrAt(500), 1e-3);
  EXPECT_DOUBLE_EQ(s->LrAt(-3), 1e-5);
}

TEST(LrScheduleTest, WarmupLrLinear) {
  auto s = LrSchedule::Create(Warmup(SchedulerType::kWarmupLR, WarmupType::kLinear), 0);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_DOUBLE_EQ(s->LrAt(0), 1e-5);
  EXPECT_NEAR(s->LrAt(5), 1e-5 + (1e-3 - 1e-5) * 0.5, 1e-15);
  EXPECT_DOUBLE_EQ(s->LrAt(11), 1e-3);
}

TEST(LrScheduleTest, WarmupDecayLrDecaysLinearlyToMinAtTotal) {
  auto s = LrSchedule::Create(Warmup(SchedulerType::kWarmupDecayLR, WarmupType::kLinear), 0);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_NEAR(s->LrAt(9), 1e-5 + (1e-3 - 1e-5) * 0.9, 1e-15);
  EXPECT_DOUBLE_EQ(s->LrAt(10), 1e-3);                               // (30-10)/(30-10)
  EXPECT_NEAR(s->LrAt(20), 1e-5 + (1e-3 - 1e-5) * 0.5, 1e-15);      // (30-20)/20
  EXPECT_DOUBLE_EQ(s->LrAt(30), 1e-5);
  EXPECT_DOUBLE_EQ(s->LrAt(40), 1e-5);  // Clamped at gamma 0.
}

TEST(LrScheduleTest, WarmupBelowTwoStepsIsRaisedToTwo) {
  SchedulerConfig c = Warmup(SchedulerType::kWarmupLR, WarmupType::kLinear);
  c.warmup_num_steps = 0;
  auto s = LrSchedule::Create(c, 0);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_DOUBLE_EQ(s->LrAt(0), 1e-5);
  EXPECT_NEAR(s->LrAt(1), 1e-5 + (1e-3 - 1e-5) * 0.5, 1e-15);
  EXPECT_DOUBLE_EQ(s->LrAt(2), 1e-3);
}

TEST(LrScheduleTest, BadValuesNameTheKey) {
  SchedulerConfig c = Warmup(SchedulerType::kWarmupDecayLR, WarmupType::kLog);
  c.total_num_steps = 0;
  auto s = LrSchedule::Create(c, 0);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.status().message().find("total_num_steps"), absl::string_view::npos);

  c = Warmup(SchedulerType::kWarmupLR, WarmupType::kLog);
  c.warmup_max_lr = -1;
  s = LrSchedule::Create(c, 0);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.status().message().find("warmup_max_lr"), absl::string_view::npos);

  c.warmup_max_lr = 1e-3;
  c.warmup_num_steps = -5;
  s = LrSchedule::Create(c, 0);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.status().message().find("warmup_num_steps"), absl::string_view::npos);

  s = LrSchedule::Create(SchedulerConfig{}, std::nan(""));
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.status().message().find("optimizer.params.lr"), absl::string_view::npos);
}

}  // namespace
}  // namespace spill::worker
