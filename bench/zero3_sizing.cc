#include "bench/zero3_sizing.h"

#include <algorithm>
#include <cstdint>
#include <vector>

namespace spill::bench {
namespace {

constexpr uint64_t kExtentAlign = 2 << 20;

}  // namespace

uint64_t PackedPinnedBytes(const PoolObjects& objects, uint64_t segment) {
  std::vector<uint64_t> free_bytes;  // per segment
  auto place = [&](uint64_t bytes) {
    bytes = (bytes + kExtentAlign - 1) / kExtentAlign * kExtentAlign;
    for (uint64_t& f : free_bytes) {
      if (f >= bytes) {
        f -= bytes;
        return;
      }
    }
    free_bytes.push_back(segment >= bytes ? segment - bytes : 0);
  };
  // Every rank of the node registers its own shards in the same job, and
  // the ranks build the layers side by side.
  for (const int64_t layer : objects.layers) {
    const uint64_t n = static_cast<uint64_t>((layer + objects.world - 1) / objects.world);
    for (int64_t rank = 0; rank < objects.world; ++rank) {
      if (objects.params) place(objects.element_bytes * n);
      place(objects.element_bytes * n);
      for (int k = 0; objects.states && k < 3; ++k) place(4 * n);
      if (objects.accumulate) place(4 * n);
    }
  }
  return free_bytes.size() * segment;
}

std::vector<uint64_t> SegmentCandidates(uint64_t smallest) {
  smallest = (smallest + kExtentAlign - 1) / kExtentAlign * kExtentAlign;
  // At most 257 candidates: steps of a 256th of the range, rounded up to
  // the 2 MiB grid, and twice the smallest itself.
  const uint64_t step =
      std::max(kExtentAlign, (smallest / 256 + kExtentAlign - 1) / kExtentAlign * kExtentAlign);
  std::vector<uint64_t> out;
  for (uint64_t segment = smallest; segment < 2 * smallest; segment += step) out.push_back(segment);
  out.push_back(2 * smallest);
  return out;
}

PinnedPlan ChoosePinnedSegment(const PoolObjects& objects, uint64_t smallest,
                               uint64_t extra_segments) {
  PinnedPlan best;
  uint64_t best_total = UINT64_MAX;
  for (const uint64_t segment : SegmentCandidates(smallest)) {
    const uint64_t packed = PackedPinnedBytes(objects, segment);
    if (packed + extra_segments * segment < best_total) {
      best_total = packed + extra_segments * segment;
      best = {segment, packed};
    }
  }
  return best;
}

}  // namespace spill::bench
