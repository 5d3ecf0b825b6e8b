#include "storage/extent_allocator.h"

#include <cstdint>
#include <iterator>
#include <map>
#include <optional>
#include <random>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace spill::storage {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;

// Everything observable about an allocator, to check that a failed call
// changed nothing.
struct Snapshot {
  uint64_t used;
  uint64_t largest;
  size_t count;
  bool operator==(const Snapshot&) const = default;
};

Snapshot Snap(const ExtentAllocator& a) {
  return Snapshot{a.used_bytes(), a.largest_free(), a.allocation_count()};
}

// A reference model: the live extents as an interval set. Because the
// allocator keeps free space as maximal extents, the gaps between live
// extents are exactly its free extents, so the model can predict the
// first-fit offset of every request, not just check that it is plausible.
class Model {
 public:
  explicit Model(uint64_t capacity) : capacity_(capacity) {}

  std::optional<uint64_t> FirstFit(uint64_t size, uint64_t alignment) const {
    uint64_t gap_start = 0;
    for (auto it = live_.begin();; ++it) {
      const uint64_t gap_end = it == live_.end() ? capacity_ : it->first;
      const uint64_t rem = gap_start % alignment;
      const uint64_t pad = rem == 0 ? 0 : alignment - rem;
      if (gap_end > gap_start && pad < gap_end - gap_start &&
          gap_end - gap_start - pad >= size) {
        return gap_start + pad;
      }
      if (it == live_.end()) return std::nullopt;
      gap_start = it->first + it->second;
    }
  }

  // Records [offset, offset + size); false when it overlaps a live extent or
  // leaves the space.
  bool Insert(uint64_t offset, uint64_t size) {
    if (offset > capacity_ || size > capacity_ - offset) return false;
    auto next = live_.lower_bound(offset);
    if (next != live_.end() && next->first < offset + size) return false;
    if (next != live_.begin()) {
      auto prev = std::prev(next);
      if (prev->first + prev->second > offset) return false;
    }
    live_.emplace(offset, size);
    used_ += size;
    return true;
  }

  void Erase(uint64_t offset) {
    used_ -= live_.at(offset);
    live_.erase(offset);
  }

  const std::map<uint64_t, uint64_t>& live() const { return live_; }
  uint64_t used() const { return used_; }

 private:
  uint64_t capacity_;
  uint64_t used_ = 0;
  std::map<uint64_t, uint64_t> live_;
};

TEST(ExtentAllocatorTest, FirstAllocationStartsAtZeroAndFreeRestores) {
  ExtentAllocator a(1 << 20);
  absl::StatusOr<uint64_t> off = a.Allocate(4096, 4096);
  ASSERT_TRUE(off.ok()) << off.status();
  EXPECT_EQ(*off, 0u);
  EXPECT_EQ(a.used_bytes(), 4096u);
  EXPECT_EQ(a.free_bytes(), (1u << 20) - 4096);
  EXPECT_EQ(a.SizeOf(0).value(), 4096u);
  EXPECT_TRUE(a.CheckInvariants());
  ASSERT_TRUE(a.Free(0).ok());
  EXPECT_TRUE(a.empty());
  EXPECT_EQ(a.largest_free(), 1u << 20);
  EXPECT_TRUE(a.CheckInvariants());
}

TEST(ExtentAllocatorTest, AlignmentLeavesHeadFreeAndCoalescesOnFree) {
  ExtentAllocator a(64 * 1024);
  ASSERT_EQ(a.Allocate(100, 1).value(), 0u);
  ASSERT_EQ(a.Allocate(100, 4096).value(), 4096u);
  // The head [100, 4096) stays free and is used by the next unaligned fit.
  ASSERT_EQ(a.Allocate(50, 2).value(), 100u);
  EXPECT_TRUE(a.CheckInvariants());
  ASSERT_TRUE(a.Free(100).ok());
  ASSERT_TRUE(a.Free(4096).ok());
  ASSERT_TRUE(a.Free(0).ok());
  EXPECT_EQ(a.largest_free(), 64u * 1024);
  EXPECT_TRUE(a.CheckInvariants());
}

TEST(ExtentAllocatorTest, FreeMergesWithBothNeighbours) {
  ExtentAllocator a(3000);
  ASSERT_EQ(a.Allocate(1000, 1).value(), 0u);
  ASSERT_EQ(a.Allocate(1000, 1).value(), 1000u);
  ASSERT_EQ(a.Allocate(1000, 1).value(), 2000u);
  ASSERT_TRUE(a.Free(0).ok());
  ASSERT_TRUE(a.Free(2000).ok());
  EXPECT_EQ(a.largest_free(), 1000u);
  ASSERT_TRUE(a.Free(1000).ok());
  EXPECT_EQ(a.largest_free(), 3000u);
  EXPECT_TRUE(a.CheckInvariants());
}

TEST(ExtentAllocatorTest, ExactFitAndFullSpace) {
  ExtentAllocator a(8192);
  ASSERT_EQ(a.Allocate(8192, 8192).value(), 0u);
  EXPECT_EQ(a.free_bytes(), 0u);
  EXPECT_EQ(a.largest_free(), 0u);
  EXPECT_TRUE(a.CheckInvariants());
  EXPECT_EQ(a.Allocate(1, 1).status().code(), absl::StatusCode::kResourceExhausted);
}

TEST(ExtentAllocatorTest, BadInputsChangeNothing) {
  ExtentAllocator a(1 << 16);
  ASSERT_EQ(a.Allocate(1000, 64).value(), 0u);
  ASSERT_EQ(a.Allocate(1000, 64).value(), 1024u);
  const Snapshot before = Snap(a);

  EXPECT_EQ(a.Allocate(0, 64).status().code(), absl::StatusCode::kInvalidArgument);
  for (uint64_t alignment : {uint64_t{0}, uint64_t{3}, uint64_t{6}, uint64_t{4097},
                             (uint64_t{1} << 63) + 1}) {
    EXPECT_EQ(a.Allocate(16, alignment).status().code(), absl::StatusCode::kInvalidArgument)
        << "alignment " << alignment;
  }
  EXPECT_EQ(a.Free(1).code(), absl::StatusCode::kNotFound);      // Interior of [0, 1000).
  EXPECT_EQ(a.Free(999).code(), absl::StatusCode::kNotFound);    // Last byte of it.
  EXPECT_EQ(a.Free(5000).code(), absl::StatusCode::kNotFound);   // In free space.
  EXPECT_EQ(a.Free(1 << 20).code(), absl::StatusCode::kNotFound);  // Past capacity.
  EXPECT_EQ(a.SizeOf(1).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(Snap(a), before);
  EXPECT_TRUE(a.CheckInvariants());

  ASSERT_TRUE(a.Free(0).ok());
  const Snapshot after_free = Snap(a);
  EXPECT_EQ(a.Free(0).code(), absl::StatusCode::kNotFound);  // Double free.
  EXPECT_EQ(Snap(a), after_free);
  EXPECT_TRUE(a.CheckInvariants());
}

TEST(ExtentAllocatorTest, ExhaustionMessageGivesRequestFreeAndLargest) {
  ExtentAllocator a(1 << 20);
  // Leave 256 KiB free in two 128 KiB holes.
  ASSERT_EQ(a.Allocate(128 << 10, 1).value(), 0u);
  ASSERT_EQ(a.Allocate(384 << 10, 1).value(), 128u << 10);
  ASSERT_EQ(a.Allocate(128 << 10, 1).value(), 512u << 10);
  ASSERT_EQ(a.Allocate(384 << 10, 1).value(), 640u << 10);
  ASSERT_TRUE(a.Free(0).ok());
  ASSERT_TRUE(a.Free(512 << 10).ok());
  const Snapshot before = Snap(a);
  absl::StatusOr<uint64_t> r = a.Allocate(200 << 10, 1);
  ASSERT_EQ(r.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string(r.status().message()),
              AllOf(HasSubstr("200.0 KiB"), HasSubstr("256.0 KiB free"),
                    HasSubstr("largest free extent 128.0 KiB")));
  EXPECT_EQ(Snap(a), before);
}

TEST(ExtentAllocatorTest, HugeAlignmentDoesNotOverflow) {
  ExtentAllocator a(1 << 20);
  const uint64_t top = uint64_t{1} << 63;
  ASSERT_EQ(a.Allocate(10, top).value(), 0u);  // 0 is a multiple of anything.
  EXPECT_EQ(a.Allocate(10, top).status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(a.CheckInvariants());
}

TEST(ExtentAllocatorTest, ZeroCapacity) {
  ExtentAllocator a(0);
  EXPECT_TRUE(a.CheckInvariants());
  EXPECT_EQ(a.Allocate(1, 1).status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(a.largest_free(), 0u);
}

// Random operations against the model, checking after every step.
void RunRandomOps(uint32_t seed, uint64_t capacity, int ops) {
  SCOPED_TRACE(testing::Message() << "seed " << seed);
  std::mt19937_64 rng(seed);
  ExtentAllocator a(capacity);
  Model model(capacity);
  std::vector<uint64_t> live;  // Offsets, for picking one to free.
  int exhausted = 0;
  for (int op = 0; op < ops; ++op) {
    if (live.empty() || rng() % 100 < 55) {
      // Sizes skewed small with an occasional large one; alignments 1..64 KiB.
      const uint64_t max_size = rng() % 10 == 0 ? capacity / 4 : 4096;
      const uint64_t size = rng() % max_size + 1;
      const uint64_t alignment = uint64_t{1} << (rng() % 17);
      const std::optional<uint64_t> expected = model.FirstFit(size, alignment);
      const Snapshot before = Snap(a);
      absl::StatusOr<uint64_t> got = a.Allocate(size, alignment);
      if (!expected.has_value()) {
        ASSERT_EQ(got.status().code(), absl::StatusCode::kResourceExhausted)
            << "op " << op << ": size " << size << " alignment " << alignment;
        ASSERT_EQ(Snap(a), before);
        ++exhausted;
      } else {
        ASSERT_TRUE(got.ok()) << "op " << op << ": " << got.status();
        ASSERT_EQ(*got, *expected) << "op " << op << ": not first fit";
        ASSERT_EQ(*got % alignment, 0u);
        ASSERT_TRUE(model.Insert(*got, size)) << "op " << op << ": overlap or out of range";
        live.push_back(*got);
      }
    } else {
      const size_t pick = rng() % live.size();
      const uint64_t offset = live[pick];
      live[pick] = live.back();
      live.pop_back();
      ASSERT_EQ(a.SizeOf(offset).value(), model.live().at(offset));
      ASSERT_TRUE(a.Free(offset).ok()) << "op " << op;
      model.Erase(offset);
      ASSERT_EQ(a.Free(offset).code(), absl::StatusCode::kNotFound);  // Double free.
    }
    ASSERT_EQ(a.used_bytes(), model.used());
    ASSERT_EQ(a.allocation_count(), model.live().size());
    ASSERT_TRUE(a.CheckInvariants()) << "op " << op;
  }
  EXPECT_GT(exhausted, 0) << "the sequence never filled the space; the test is too weak";
  for (uint64_t offset : live) ASSERT_TRUE(a.Free(offset).ok());
  EXPECT_TRUE(a.empty());
  EXPECT_EQ(a.used_bytes(), 0u);
  EXPECT_EQ(a.largest_free(), capacity);
  EXPECT_TRUE(a.CheckInvariants());
}

TEST(ExtentAllocatorTest, RandomOpsMatchModel) {
  for (uint32_t seed : {1u, 2u, 3u, 42u, 2024u, 77777u}) {
    RunRandomOps(seed, 256 << 10, 20000);
    if (HasFatalFailure()) return;
  }
}

TEST(ExtentAllocatorTest, RandomOpsOddCapacity) {
  // A capacity that is not a multiple of any alignment exercises the tail.
  for (uint32_t seed : {5u, 6u, 7u}) {
    RunRandomOps(seed, (256 << 10) + 12345, 10000);
    if (HasFatalFailure()) return;
  }
}

TEST(ExtentAllocatorTest, AllocateAtClaimsAFreeRangeAndRefusesOverlap) {
  ExtentAllocator a(1 << 20);
  EXPECT_EQ(a.AllocateAt(0, 0).code(), absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(a.AllocateAt(8192, 4096).ok());
  EXPECT_EQ(a.used_bytes(), 4096u);
  EXPECT_TRUE(a.CheckInvariants());
  EXPECT_EQ(a.AllocateAt(4096, 8192).code(), absl::StatusCode::kFailedPrecondition);  // overlap
  EXPECT_EQ(a.AllocateAt(1 << 20, 4096).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(a.AllocateAt((1 << 20) - 4096, 8192).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(a.used_bytes(), 4096u);
  // First fit now skips the claimed range.
  auto off = a.Allocate(8192, 4096);
  ASSERT_TRUE(off.ok());
  EXPECT_EQ(*off, 0u);
  auto next = a.Allocate(4096, 4096);
  ASSERT_TRUE(next.ok());
  EXPECT_EQ(*next, 12288u);
  ASSERT_TRUE(a.Free(8192).ok());
  EXPECT_TRUE(a.CheckInvariants());
}

}  // namespace
}  // namespace spill::storage
