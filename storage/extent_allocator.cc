#include "storage/extent_allocator.h"

#include <algorithm>
#include <iterator>

#include "absl/strings/str_cat.h"
#include "common/units.h"

namespace spill::storage {
namespace {

bool IsPowerOfTwo(uint64_t x) { return x != 0 && (x & (x - 1)) == 0; }

// Bytes to skip from offset to the next multiple of alignment (a power of
// two). Computed without offset + alignment, which could overflow.
uint64_t PaddingTo(uint64_t offset, uint64_t alignment) {
  uint64_t rem = offset & (alignment - 1);
  return rem == 0 ? 0 : alignment - rem;
}

}  // namespace

ExtentAllocator::ExtentAllocator(uint64_t capacity) : capacity_(capacity) {
  if (capacity_ > 0) free_.emplace(0, capacity_);
}

absl::StatusOr<uint64_t> ExtentAllocator::Allocate(uint64_t size, uint64_t alignment) {
  if (size == 0) return absl::InvalidArgumentError("cannot allocate an extent of 0 bytes");
  if (!IsPowerOfTwo(alignment)) {
    return absl::InvalidArgumentError(
        absl::StrCat("extent alignment ", alignment, " is not a power of two"));
  }
  for (auto it = free_.begin(); it != free_.end(); ++it) {
    const uint64_t start = it->first;
    const uint64_t length = it->second;
    const uint64_t pad = PaddingTo(start, alignment);
    if (pad >= length || length - pad < size) continue;
    const uint64_t offset = start + pad;
    const uint64_t tail = length - pad - size;
    free_.erase(it);
    if (pad > 0) free_.emplace(start, pad);
    if (tail > 0) free_.emplace(offset + size, tail);
    allocated_.emplace(offset, size);
    used_ += size;
    return offset;
  }
  return absl::ResourceExhaustedError(absl::StrCat(
      "no free extent fits ", FormatBytes(size), " (", size, " bytes, alignment ", alignment,
      "): ", FormatBytes(free_bytes()), " free of ", FormatBytes(capacity_),
      ", largest free extent ", FormatBytes(largest_free())));
}

absl::Status ExtentAllocator::AllocateAt(uint64_t offset, uint64_t size) {
  if (size == 0) return absl::InvalidArgumentError("cannot allocate an extent of 0 bytes");
  auto it = free_.upper_bound(offset);
  if (it == free_.begin() || size > capacity_ || offset > capacity_ - size) {
    return absl::FailedPreconditionError(
        absl::StrCat("[", offset, ", +", size, ") is not inside a free extent"));
  }
  --it;
  const uint64_t start = it->first;
  const uint64_t length = it->second;
  if (offset + size > start + length) {
    return absl::FailedPreconditionError(
        absl::StrCat("[", offset, ", +", size, ") is not inside a free extent"));
  }
  free_.erase(it);
  if (offset > start) free_.emplace(start, offset - start);
  if (start + length > offset + size) free_.emplace(offset + size, start + length - offset - size);
  allocated_.emplace(offset, size);
  used_ += size;
  return absl::OkStatus();
}

absl::Status ExtentAllocator::Free(uint64_t offset) {
  auto it = allocated_.find(offset);
  if (it == allocated_.end()) {
    return absl::NotFoundError(
        absl::StrCat("no allocated extent starts at offset ", offset, " (double free?)"));
  }
  uint64_t start = offset;
  uint64_t length = it->second;
  allocated_.erase(it);
  used_ -= length;

  // Merge with the free extent that starts where this one ends.
  auto next = free_.lower_bound(start);
  if (next != free_.end() && next->first == start + length) {
    length += next->second;
    next = free_.erase(next);
  }
  // Merge with the free extent that ends where this one starts.
  if (next != free_.begin()) {
    auto prev = std::prev(next);
    if (prev->first + prev->second == start) {
      prev->second += length;
      return absl::OkStatus();
    }
  }
  free_.emplace_hint(next, start, length);
  return absl::OkStatus();
}

absl::StatusOr<uint64_t> ExtentAllocator::SizeOf(uint64_t offset) const {
  auto it = allocated_.find(offset);
  if (it == allocated_.end()) {
    return absl::NotFoundError(absl::StrCat("no allocated extent starts at offset ", offset));
  }
  return it->second;
}

uint64_t ExtentAllocator::largest_free() const {
  uint64_t largest = 0;
  for (const auto& [offset, size] : free_) largest = std::max(largest, size);
  return largest;
}

bool ExtentAllocator::CheckInvariants() const {
  auto f = free_.begin();
  auto a = allocated_.begin();
  uint64_t cursor = 0;
  uint64_t allocated_sum = 0;
  bool previous_free = false;
  while (f != free_.end() || a != allocated_.end()) {
    const bool take_free = a == allocated_.end() || (f != free_.end() && f->first < a->first);
    const auto& [offset, size] = take_free ? *f++ : *a++;
    if (offset != cursor || size == 0 || size > capacity_ - offset) return false;
    if (take_free && previous_free) return false;  // Two free extents touch.
    if (!take_free) allocated_sum += size;
    previous_free = take_free;
    cursor = offset + size;
  }
  return cursor == capacity_ && allocated_sum == used_;
}

}  // namespace spill::storage
