// How large a pinned pool, in segments of which size, zero3_train gives
// spilld: its objects placed first fit into segments, the way spilld's
// pinned arena places them (an object never spans two segments).
//
//   PoolObjects objects{layers, world, 2, /*params=*/true, /*states=*/true, false};
//   PinnedPlan plan = ChoosePinnedSegment(objects, smallest, /*extra_segments=*/2);
#ifndef SPILL_BENCH_ZERO3_SIZING_H_
#define SPILL_BENCH_ZERO3_SIZING_H_

#include <cstdint>
#include <vector>

namespace spill::bench {

// The objects one job registers, layer by layer: per rank of the node, the
// 16-bit (or fp32) parameter shard, its gradient, then the fp32 master, two
// moments and, with gradient accumulation, an fp32 accumulation buffer (all
// four of one size, so their order among themselves does not matter). The
// ranks are taken one after another within a layer; in a run they register
// side by side, so the real placement can differ, which the pool's margin
// covers.
struct PoolObjects {
  std::vector<int64_t> layers;  // Parameters of each layer, unsharded.
  int64_t world = 1;            // Ranks of the node; each holds a 1/world shard.
  uint64_t element_bytes = 2;   // Of a parameter and a gradient shard.
  bool params = true;           // Parameter shards live in the pool.
  bool states = true;           // fp32 master and moments live in the pool.
  bool accumulate = false;      // An fp32 accumulation buffer per gradient.
};

// Bytes of whole segments of `segment` bytes that hold `objects` placed first
// fit, each rounded up to 2 MiB (the largest extent alignment spilld uses).
uint64_t PackedPinnedBytes(const PoolObjects& objects, uint64_t segment);

struct PinnedPlan {
  uint64_t segment = 0;  // Bytes per segment.
  uint64_t packed = 0;   // PackedPinnedBytes(objects, segment).
};

// The segment sizes ChoosePinnedSegment tries: from `smallest` (rounded up
// to 2 MiB) to twice that, both included, in steps of a 256th of the range
// rounded up to 2 MiB (2 MiB at least); all multiples of 2 MiB.
std::vector<uint64_t> SegmentCandidates(uint64_t smallest);

// The candidate (`smallest` must hold the largest object) whose packed
// bytes plus `extra_segments` segments are fewest: a segment a little larger
// than the smallest can hold two objects where the smallest holds one.
PinnedPlan ChoosePinnedSegment(const PoolObjects& objects, uint64_t smallest,
                               uint64_t extra_segments);

}  // namespace spill::bench

#endif  // SPILL_BENCH_ZERO3_SIZING_H_
