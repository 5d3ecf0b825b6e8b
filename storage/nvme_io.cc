// NvmeTier's data path: splitting a Write/Read into per-block requests,
// computing and checking the CRC32C of each block, completing the op.
#include <errno.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "storage/crc32c.h"
#include "storage/nvme_ring.h"
#include "storage/nvme_tier.h"

namespace spill::storage {
namespace internal {

IoOp::~IoOp() { std::free(bounce); }

uint64_t IoOp::Prepare(IoUnit* u) {
  if (!write || !u->crc_here) return 0;
  const uint64_t start = uint64_t{u->block} * block_size;
  const uint64_t len = std::min<uint64_t>(block_size, bytes - start);
  (*out_crcs)[u->block] = Crc32c(mem + start, len);
  return len;
}

void IoOp::Fail(absl::Status s) {
  std::lock_guard<std::mutex> lock(mu);
  if (status.ok()) status = std::move(s);
}

namespace {

absl::Status UnitError(const IoOp& op, const IoUnit& u, int err, bool eof) {
  std::string msg = op.write ? "NVMe write" : absl::StrCat("NVMe read of '", op.what, "'");
  absl::StrAppend(&msg, " failed at byte offset ", u.logical_offset + u.done, " (dir ", u.file,
                  ", file offset ", u.file_offset + u.done, ")");
  if (eof) absl::StrAppend(&msg, ": 0-byte read, unexpected end of file");
  return absl::ErrnoToStatus(err, msg);
}

}  // namespace

void IoOp::UnitDone(IoUnit* u, int err, bool eof) {
  if (u->slot >= 0) tier->ReleaseSlot(u->slot);
  if (err != 0) Fail(UnitError(*this, *u, err, eof));
  if (block_left[u->block].fetch_sub(1) == 1 && !write) {
    bool ok;
    {
      std::lock_guard<std::mutex> lock(mu);
      ok = status.ok();
    }
    const uint64_t start = uint64_t{u->block} * block_size;
    const uint64_t len = std::min<uint64_t>(block_size, bytes - start);
    if (ok && bounce != nullptr && tail_offset >= start && tail_offset < start + len) {
      std::memcpy(mem + tail_offset, bounce, tail_len);
    }
    const uint32_t got = ok ? Crc32c(mem + start, len) : 0;
    if (ok && got != crcs[u->block]) {
      tier->crc_failures_.fetch_add(1, std::memory_order_relaxed);
      Fail(absl::DataLossError(absl::StrFormat(
          "CRC32C mismatch reading '%s': block %u at byte offset %u (%u bytes, dir %u) stored "
          "0x%08x, read 0x%08x",
          what, u->block, start, len, u->file, crcs[u->block], got)));
    }
  }
  if (units_left.fetch_sub(1) != 1) return;
  tier->RecordOp(write, bytes, status);
  IoDone callback = std::move(done);
  absl::Status result = status;
  delete this;
  callback(std::move(result));
}

}  // namespace internal

void NvmeTier::Write(const NvmeExtent& extent, const void* src, uint64_t bytes,
                     std::vector<uint32_t>* crcs, IoDone done) {
  Submit(true, extent, static_cast<uint8_t*>(const_cast<void*>(src)), bytes, crcs, nullptr, "",
         std::move(done));
}

void NvmeTier::Read(const NvmeExtent& extent, const std::vector<uint32_t>& crcs, void* dst,
                    uint64_t bytes, std::string what, IoDone done) {
  Submit(false, extent, static_cast<uint8_t*>(dst), bytes, nullptr, &crcs, std::move(what),
         std::move(done));
}

namespace {

absl::Status CheckArgs(bool write, const NvmeExtent& extent, const uint8_t* mem, uint64_t bytes,
                       uint32_t block_size, const std::vector<uint32_t>* out_crcs,
                       const std::vector<uint32_t>* in_crcs) {
  const char* op = write ? "NVMe write" : "NVMe read";
  if (mem == nullptr || reinterpret_cast<uintptr_t>(mem) % 4096 != 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s: memory at %p is not 4 KiB aligned (O_DIRECT needs it)", op, mem));
  }
  if (bytes == 0) return absl::InvalidArgumentError(absl::StrCat(op, ": 0 bytes"));
  if (bytes > extent.bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": ", bytes, " bytes do not fit the extent of ", extent.bytes));
  }
  const uint64_t blocks = (bytes + block_size - 1) / block_size;
  if (write && out_crcs == nullptr) {
    return absl::InvalidArgumentError("NVMe write: no vector for the checksums");
  }
  if (!write && in_crcs->size() != blocks) {
    return absl::InvalidArgumentError(
        absl::StrCat("NVMe read: ", in_crcs->size(), " checksums for ", bytes, " bytes in ",
                     blocks, " blocks of ", block_size, " (read exactly the bytes written)"));
  }
  return absl::OkStatus();
}

}  // namespace

void NvmeTier::Submit(bool write, const NvmeExtent& extent, uint8_t* mem, uint64_t bytes,
                      std::vector<uint32_t>* out_crcs, const std::vector<uint32_t>* in_crcs,
                      std::string what, IoDone done) {
  const uint32_t bs = options_.block_size;
  absl::Status status = CheckArgs(write, extent, mem, bytes, bs, out_crcs, in_crcs);
  // Block b is block b / lanes of lane b % lanes; a lane's blocks run over
  // its pieces in order (CheckExtent makes sure they add up).
  std::vector<std::vector<NvmePiece>> lanes;
  if (status.ok()) status = CheckExtent(extent, &lanes);
  if (!status.ok()) {
    RecordOp(write, bytes, status);
    done(status);
    return;
  }
  const uint64_t blocks = (bytes + bs - 1) / bs;
  auto* op = new internal::IoOp;
  op->tier = this;
  op->write = write;
  op->mem = mem;
  op->bytes = bytes;
  op->block_size = bs;
  op->out_crcs = out_crcs;
  if (in_crcs != nullptr) op->crcs = *in_crcs;
  if (out_crcs != nullptr) out_crcs->assign(blocks, 0);
  op->what = std::move(what);
  op->done = std::move(done);
  op->tail_offset = bytes;
  if (bytes % 4096 != 0) {
    op->tail_offset = bytes & ~uint64_t{4095};
    op->tail_len = static_cast<uint32_t>(bytes - op->tail_offset);
    op->bounce = static_cast<uint8_t*>(std::aligned_alloc(4096, 4096));
    std::memset(op->bounce, 0, 4096);
    if (write) std::memcpy(op->bounce, mem + op->tail_offset, op->tail_len);
  }
  op->block_left = std::make_unique<std::atomic<uint32_t>[]>(blocks);
  op->units.reserve(blocks + 1);  // pointers into units stay valid
  struct Cursor {
    size_t piece = 0;
    uint64_t first_block = 0;  // the lane block the piece starts with
  };
  std::vector<Cursor> cursors(lanes.size());
  for (uint64_t b = 0; b < blocks; ++b) {
    const std::vector<NvmePiece>& lane = lanes[b % lanes.size()];
    Cursor& c = cursors[b % lanes.size()];
    const uint64_t j = b / lanes.size();
    while (j >= c.first_block + lane[c.piece].length / bs) {
      c.first_block += lane[c.piece++].length / bs;
    }
    const NvmePiece& piece = lane[c.piece];
    const uint64_t start = b * bs;
    const uint64_t len = std::min<uint64_t>(bs, bytes - start);
    const uint64_t file_offset = piece.offset + (j - c.first_block) * bs;
    const uint64_t direct = std::min(start + len, op->tail_offset) - start;
    uint32_t count = 0;
    if (direct > 0) {
      op->units.push_back({op, static_cast<uint32_t>(b), piece.dir, file_offset, start,
                           mem + start, static_cast<uint32_t>(direct), 0,
                           AcquireSlot(mem + start, direct), 0, true});
      ++count;
    }
    if (direct < len) {
      op->units.push_back({op, static_cast<uint32_t>(b), piece.dir, file_offset + direct,
                           op->tail_offset, op->bounce, 4096, 0, -1, 0, direct == 0});
      ++count;
    }
    op->block_left[b].store(count);
  }
  op->units_left.store(op->units.size());
  std::vector<std::vector<internal::IoUnit*>> per_ring(rings_.size());
  const uint64_t first = next_op_.fetch_add(1, std::memory_order_relaxed);
  for (internal::IoUnit& u : op->units) {
    per_ring[(first + u.block) % rings_.size()].push_back(&u);
  }
  for (size_t r = 0; r < rings_.size(); ++r) {
    if (!per_ring[r].empty()) rings_[r]->Enqueue(per_ring[r], /*pump_here=*/!write);
  }
}

void NvmeTier::RecordOp(bool write, uint64_t bytes, const absl::Status& status) {
  (write ? write_ops_ : read_ops_).fetch_add(1, std::memory_order_relaxed);
  if (status.ok()) {
    (write ? bytes_written_ : bytes_read_).fetch_add(bytes, std::memory_order_relaxed);
    return;
  }
  std::lock_guard<std::mutex> lock(err_mu_);
  ++errors_[absl::StatusCodeToString(status.code())];
}

}  // namespace spill::storage
