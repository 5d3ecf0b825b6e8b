// zero3_train's pinned pool sizing: first-fit packing and the segment choice.
#include "bench/zero3_sizing.h"

#include <cstdint>
#include <vector>

#include "gtest/gtest.h"
#include "worker/gpt.h"
#include "worker/gpt_shape.h"

namespace spill::bench {
namespace {

constexpr uint64_t kMiB = 1 << 20;
constexpr uint64_t kGiB = 1ull << 30;

// One layer of 1Mi parameters, bf16: parameter 2 MiB, gradient 2 MiB, then
// three 4 MiB fp32 states.
PoolObjects OneLayer() {
  PoolObjects o;
  o.layers = {1 << 20};
  return o;
}

TEST(Zero3SizingTest, PacksFirstFit) {
  // 8 MiB: [2 2 4] [4 4].
  EXPECT_EQ(PackedPinnedBytes(OneLayer(), 8 * kMiB), 16 * kMiB);
  // 6 MiB: [2 2] [4] [4] [4]: a 4 MiB state never shares with another.
  EXPECT_EQ(PackedPinnedBytes(OneLayer(), 6 * kMiB), 24 * kMiB);
  // Without parameters and states only the gradient is left.
  PoolObjects grads = OneLayer();
  grads.params = false;
  grads.states = false;
  EXPECT_EQ(PackedPinnedBytes(grads, 8 * kMiB), 8 * kMiB);
  // Two ranks hold half each: ten objects, each in a 2 MiB extent, four per segment.
  PoolObjects two = OneLayer();
  two.world = 2;
  EXPECT_EQ(PackedPinnedBytes(two, 8 * kMiB), 24 * kMiB);
}

TEST(Zero3SizingTest, ChoosesTheSegmentThatWastesLeast) {
  // From 6 MiB: 6 MiB gives 24 + 2 * 6 = 36; 8 MiB gives 16 + 16 = 32.
  PinnedPlan plan = ChoosePinnedSegment(OneLayer(), 6 * kMiB, 2);
  EXPECT_EQ(plan.segment, 8 * kMiB);
  EXPECT_EQ(plan.packed, 16 * kMiB);
  // Extra segments weigh against larger ones: with 20 extra, 6 MiB costs
  // 24 + 120 = 144 and 8 MiB 16 + 160 = 176.
  plan = ChoosePinnedSegment(OneLayer(), 6 * kMiB, 20);
  EXPECT_EQ(plan.segment, 6 * kMiB);
  // A smallest size off the 2 MiB grid is rounded up, never down.
  plan = ChoosePinnedSegment(OneLayer(), 5 * kMiB, 20);
  EXPECT_EQ(plan.segment, 6 * kMiB);
}

TEST(Zero3SizingTest, CandidatesRunFromTheSmallestToTwiceIt) {
  // Below 512 MiB: every 2 MiB.
  std::vector<uint64_t> c = SegmentCandidates(300 * kMiB);
  ASSERT_EQ(c.size(), 151u);
  EXPECT_EQ(c.front(), 300 * kMiB);
  EXPECT_EQ(c.back(), 600 * kMiB);
  // Larger: at most 257, the last twice the smallest even where the step
  // does not divide the range (1202 MiB: steps of 6 MiB).
  for (uint64_t smallest : {1202 * kMiB, 1201 * kMiB + 5, 64 * 1024 * kMiB}) {
    c = SegmentCandidates(smallest);
    const uint64_t rounded = (smallest + 2 * kMiB - 1) / (2 * kMiB) * (2 * kMiB);
    EXPECT_LE(c.size(), 257u) << smallest;
    EXPECT_EQ(c.front(), rounded) << smallest;
    EXPECT_EQ(c.back(), 2 * rounded) << smallest;
    for (size_t i = 0; i < c.size(); ++i) {
      EXPECT_EQ(c[i] % (2 * kMiB), 0u) << smallest;
      if (i > 0) {
        EXPECT_GT(c[i], c[i - 1]) << smallest;
      }
    }
  }
}

// GPT 2.7B on one rank: the smallest segment holding the embedding's fp32
// master (512 MiB) strands up to 212 MiB next to each 300 MiB block state.
TEST(Zero3SizingTest, GptTwoPointSevenBPacksTighterThanTheSmallestSegment) {
  const worker::GptShape shape = *worker::GptPreset("2.7B");
  PoolObjects o;
  const worker::GptModel model = worker::GptModel::Create(shape).value();
  for (const auto& layer : model.layers()) o.layers.push_back(layer->numel());
  const uint64_t smallest =
      (static_cast<uint64_t>(worker::GptLargestLayerParams(shape)) * 4 / (2 * kMiB) + 1) * 2 * kMiB;
  ASSERT_EQ(smallest, 512 * kMiB);
  const uint64_t at_smallest = PackedPinnedBytes(o, smallest) + 2 * smallest;
  const PinnedPlan plan = ChoosePinnedSegment(o, smallest, 2);
  EXPECT_GT(at_smallest, 51 * kGiB);
  EXPECT_LT(plan.packed + 2 * plan.segment, 42 * kGiB);
  // Never below the 16 bytes per parameter the objects need.
  int64_t params = 0;
  for (int64_t l : o.layers) params += l;
  EXPECT_GE(plan.packed, static_cast<uint64_t>(params) * 16);
  EXPECT_GE(plan.segment, smallest);
  EXPECT_LE(plan.segment, 2 * smallest);
}

}  // namespace
}  // namespace spill::bench
