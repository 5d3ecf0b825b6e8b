// ExtentAllocator hands out aligned byte ranges of a fixed-size space.
//
// Free space is kept as a set of maximal free extents ordered by offset:
// Allocate takes the first extent that fits the aligned request and splits
// it (the unused head and tail stay free); Free returns the extent and
// coalesces it with free neighbours, so two adjacent free extents never exist.
//
//   ExtentAllocator a(1 << 20);
//   auto off = a.Allocate(4096, 4096);   // off.value() == 0
//   a.Free(*off);
//
// Not thread-safe: the owner serialises calls.
#ifndef SPILL_STORAGE_EXTENT_ALLOCATOR_H_
#define SPILL_STORAGE_EXTENT_ALLOCATOR_H_

#include <cstdint>
#include <map>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace spill::storage {

class ExtentAllocator {
 public:
  explicit ExtentAllocator(uint64_t capacity);

  // Returns the offset of a new extent of size bytes starting at a multiple
  // of alignment. InvalidArgument when size is 0 or alignment is not a power
  // of two; ResourceExhausted when no free extent fits (the message gives
  // the request, the free bytes and the largest free extent).
  absl::StatusOr<uint64_t> Allocate(uint64_t size, uint64_t alignment);

  // Marks [offset, offset + size) allocated, as if Allocate had returned it
  // (restoring allocations recorded elsewhere, e.g. after a restart).
  // InvalidArgument for size 0; FailedPrecondition when the range is not
  // wholly inside one free extent (overlap or past capacity); nothing
  // changes then.
  absl::Status AllocateAt(uint64_t offset, uint64_t size);

  // Frees the extent that Allocate returned at offset. NotFound when offset
  // is not the start of an allocated extent (double free included); nothing
  // changes then.
  absl::Status Free(uint64_t offset);

  // Size of the allocated extent at offset, or NotFound.
  absl::StatusOr<uint64_t> SizeOf(uint64_t offset) const;

  uint64_t capacity() const { return capacity_; }
  uint64_t used_bytes() const { return used_; }
  uint64_t free_bytes() const { return capacity_ - used_; }
  uint64_t largest_free() const;
  size_t allocation_count() const { return allocated_.size(); }
  bool empty() const { return allocated_.empty(); }

  // Checks the structure (free and allocated extents tile [0, capacity)
  // without overlap, no two free extents touch). For tests.
  bool CheckInvariants() const;

 private:
  uint64_t capacity_;
  uint64_t used_ = 0;
  std::map<uint64_t, uint64_t> free_;       // offset -> size
  std::map<uint64_t, uint64_t> allocated_;  // offset -> size
};

}  // namespace spill::storage

#endif  // SPILL_STORAGE_EXTENT_ALLOCATOR_H_
