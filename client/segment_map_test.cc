#include "client/segment_map.h"

#include "client/cuda_host_register.h"

#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <map>
#include <cstring>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "common/memfd.h"

namespace spill::client::internal {
namespace {

constexpr uint64_t kSize = 1 << 16;

// Serves sealed memfds of kSize bytes, one per id, and counts fetches.
class FakeSegments {
 public:
  SegmentMap::Fetch fetcher() {
    return [this](uint64_t id) -> absl::StatusOr<ReceivedSegment> {
      fetches++;
      if (id == 404) return absl::NotFoundError("no segment 404");
      ReceivedSegment segment;
      segment.segment_id = id;
      segment.size_bytes = announced_size;
      if (unsealed) {
        segment.fd.Reset(::memfd_create("unsealed", MFD_CLOEXEC));
        EXPECT_EQ(::ftruncate(segment.fd.get(), kSize), 0);
        return segment;
      }
      if (!fds[id].valid()) fds[id] = std::move(CreateSealedMemfd({"test", kSize, false}).value());
      segment.fd.Reset(::dup(fds[id].get()));
      return segment;
    };
  }

  std::atomic<int> fetches{0};
  bool unsealed = false;
  uint64_t announced_size = kSize;
  std::map<uint64_t, UniqueFd> fds;
};

TEST(SegmentMapTest, MapsEachSegmentOnceAndSharesItsPages) {
  FakeSegments fake;
  SegmentMap map(fake.fetcher(), /*register_with_cuda=*/true);
  absl::StatusOr<absl::Span<uint8_t>> a = map.Resolve(3, 128, 64);
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->size(), 64u);
  std::memset(a->data(), 0xAB, a->size());
  absl::StatusOr<absl::Span<uint8_t>> b = map.Resolve(3, 0, kSize);
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(fake.fetches, 1);
  EXPECT_EQ((*b)[128], 0xAB);

  // MAP_SHARED: the owner of the memfd sees the bytes.
  Mapping owner = std::move(Mapping::Map(fake.fds[3].get(), kSize, false).value());
  EXPECT_EQ(owner.data()[128 + 63], 0xAB);

  MappingStats stats = map.stats();
  EXPECT_EQ(stats.segments_mapped, 1u);
  EXPECT_EQ(stats.bytes_mapped, kSize);
}

TEST(SegmentMapTest, ConcurrentFirstUseFetchesOnce) {
  FakeSegments fake;
  SegmentMap map(fake.fetcher(), false);
  std::vector<std::thread> threads;
  for (int i = 0; i < 8; ++i) {
    threads.emplace_back([&] { EXPECT_TRUE(map.Resolve(9, 0, 8).ok()); });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(fake.fetches, 1);
}

TEST(SegmentMapTest, RangeOutsideTheSegmentIsOutOfRange) {
  FakeSegments fake;
  SegmentMap map(fake.fetcher(), false);
  EXPECT_EQ(map.Resolve(1, kSize - 8, 16).status().code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(map.Resolve(1, kSize + 1, 0).status().code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(map.Resolve(1, 8, UINT64_MAX).status().code(), absl::StatusCode::kOutOfRange);
  EXPECT_TRUE(map.Resolve(1, kSize, 0).ok());
}

TEST(SegmentMapTest, RefusesAnUnsealedSegmentAndRetriesLater) {
  FakeSegments fake;
  fake.unsealed = true;
  SegmentMap map(fake.fetcher(), false);
  absl::Status status = map.Resolve(2, 0, 8).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(absl::StrContains(status.message(), "segment 2")) << status;
  fake.unsealed = false;
  EXPECT_TRUE(map.Resolve(2, 0, 8).ok());
  EXPECT_EQ(fake.fetches, 2) << "a refused segment is not cached";
}

TEST(SegmentMapTest, RefusesASegmentSmallerThanAnnounced) {
  FakeSegments fake;
  fake.announced_size = kSize * 2;
  SegmentMap map(fake.fetcher(), false);
  EXPECT_EQ(map.Resolve(2, 0, 8).status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST(SegmentMapTest, FetchErrorsPropagate) {
  FakeSegments fake;
  SegmentMap map(fake.fetcher(), false);
  EXPECT_EQ(map.Resolve(404, 0, 8).status().code(), absl::StatusCode::kNotFound);
}

TEST(SegmentMapTest, ClearUnmapsAndRefusesLaterUse) {
  FakeSegments fake;
  SegmentMap map(fake.fetcher(), false);
  ASSERT_TRUE(map.Resolve(1, 0, 8).ok());
  map.Clear();
  EXPECT_EQ(map.Resolve(1, 0, 8).status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST(SegmentMapTest, CudaRegistrationIsSkippedQueryablyWithoutADevice) {
  std::string reason;
  if (CudaUsable(&reason)) GTEST_SKIP() << "a CUDA device is present; tests/gpu covers this";
  FakeSegments fake;
  SegmentMap map(fake.fetcher(), /*register_with_cuda=*/true);
  ASSERT_TRUE(map.Resolve(1, 0, 8).ok());
  MappingStats stats = map.stats();
#ifdef SPILL_CLIENT_WITH_CUDA
  EXPECT_TRUE(stats.cuda_compiled);
  EXPECT_TRUE(absl::StrContains(stats.cuda_skip_reason, "no CUDA device")) << stats.cuda_skip_reason;
#else
  EXPECT_FALSE(stats.cuda_compiled);
  EXPECT_EQ(stats.cuda_skip_reason, "built without CUDA");
#endif
  EXPECT_EQ(stats.cuda_registered_bytes, 0u);
  EXPECT_EQ(stats.cuda_registered_segments, 0u);
  EXPECT_EQ(stats.cuda_register_seconds, 0.0);
  EXPECT_EQ(stats.segments_mapped, 1u);
}

TEST(SegmentMapTest, RegistrationCanBeTurnedOff) {
  FakeSegments fake;
  SegmentMap map(fake.fetcher(), /*register_with_cuda=*/false);
  ASSERT_TRUE(map.Resolve(1, 0, 8).ok());
  EXPECT_TRUE(absl::StrContains(map.stats().cuda_skip_reason, "register_with_cuda"));
  EXPECT_EQ(map.stats().cuda_registered_bytes, 0u);
}

}  // namespace
}  // namespace spill::client::internal
