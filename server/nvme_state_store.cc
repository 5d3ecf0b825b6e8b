#include "server/nvme_state_store.h"

#include <future>
#include <memory>
#include <utility>

#include "absl/strings/str_cat.h"

namespace spill::server {
namespace {

// Collects the outcomes of several I/O requests; the last one to finish
// calls done with the first error.
struct Join {
  std::mutex mu;
  int left = 0;
  absl::Status first;
  std::function<void(absl::Status)> done;

  void Finish(absl::Status status) {
    std::function<void(absl::Status)> call;
    absl::Status result;
    {
      std::lock_guard<std::mutex> lock(mu);
      if (first.ok() && !status.ok()) first = std::move(status);
      if (--left != 0) return;
      call = std::move(done);
      result = first;
    }
    call(std::move(result));
  }
};

}  // namespace

NvmeStateStore::NvmeStateStore(storage::NvmeTier* tier, std::string job, std::string what,
                               int arrays, uint64_t n, uint64_t sub_group_size)
    : tier_(tier),
      job_(std::move(job)),
      what_(std::move(what)),
      arrays_(arrays),
      n_(n),
      sub_group_size_(sub_group_size),
      pieces_((n + sub_group_size - 1) / sub_group_size) {
  for (Piece& p : pieces_) {
    p.current.resize(arrays_);
    p.shadow.resize(arrays_);
  }
}

NvmeStateStore::~NvmeStateStore() = default;

void NvmeStateStore::FreeStored(Stored& s) {
  if (s.valid) (void)tier_->Free(job_, s.extent);
  s = Stored();
}

void NvmeStateStore::ForEachArray(
    std::function<void(int, std::function<void(absl::Status)>)> fn,
    std::function<void(absl::Status)> done) {
  auto join = std::make_shared<Join>();
  join->left = arrays_;
  join->done = std::move(done);
  for (int a = 0; a < arrays_; ++a) {
    fn(a, [join](absl::Status s) { join->Finish(std::move(s)); });
  }
}

absl::Status NvmeStateStore::Initialize(const PieceFiller& fill, std::span<float> buffer) {
  if (buffer.size() < static_cast<uint64_t>(arrays_) * sub_group_size_) {
    return absl::InvalidArgumentError(absl::StrCat(what_, ": initialisation buffer too small"));
  }
  float* master = buffer.data();
  float* state[2] = {nullptr, nullptr};
  for (int a = 1; a < arrays_; ++a) state[a - 1] = buffer.data() + a * sub_group_size_;
  for (uint64_t p = 0; p < pieces_.size(); ++p) {
    const uint64_t begin = p * sub_group_size_;
    const uint64_t count = std::min(sub_group_size_, n_ - begin);
    absl::Status status = fill(begin, count, master, state);
    if (status.ok()) {
      std::promise<absl::Status> written;
      WriteAsync(begin, count, master, state,
                 [&written](absl::Status s) { written.set_value(std::move(s)); });
      status = written.get_future().get();
    }
    if (!status.ok()) {
      Abort();
      return status;
    }
  }
  Commit();
  return absl::OkStatus();
}

void NvmeStateStore::ReadAsync(uint64_t begin, uint64_t count, float* master, float* state[2],
                               std::function<void(absl::Status)> done) {
  Piece& piece = pieces_[begin / sub_group_size_];
  ForEachArray(
      [&, begin, count](int a, std::function<void(absl::Status)> cb) {
        float* dst = a == 0 ? master : state[a - 1];
        const Stored& s = piece.current[a];
        tier_->Read(s.extent, s.crcs, dst, count * sizeof(float),
                    absl::StrCat(what_, a == 0 ? " master" : " state",
                                 a == 0 ? "" : std::to_string(a - 1), " elements [", begin, ", ",
                                 begin + count, ")"),
                    std::move(cb));
      },
      std::move(done));
}

void NvmeStateStore::WriteAsync(uint64_t begin, uint64_t count, const float* master,
                                float* const state[2], std::function<void(absl::Status)> done) {
  Piece& piece = pieces_[begin / sub_group_size_];
  const uint64_t bytes = count * sizeof(float);
  ForEachArray(
      [&, bytes](int a, std::function<void(absl::Status)> cb) {
        Stored* shadow;
        absl::StatusOr<storage::NvmeExtent> extent;
        {
          std::lock_guard<std::mutex> lock(mu_);
          shadow = &piece.shadow[a];
          FreeStored(*shadow);
          extent = tier_->Allocate(job_, bytes);
          if (extent.ok()) {
            shadow->extent = *extent;
            shadow->valid = true;
          }
        }
        if (!extent.ok()) {
          cb(extent.status());
          return;
        }
        const float* src = a == 0 ? master : state[a - 1];
        tier_->Write(shadow->extent, src, bytes, &shadow->crcs, std::move(cb));
      },
      std::move(done));
}

void NvmeStateStore::Commit() {
  std::lock_guard<std::mutex> lock(mu_);
  for (Piece& p : pieces_) {
    for (int a = 0; a < arrays_; ++a) {
      if (!p.shadow[a].valid) continue;
      FreeStored(p.current[a]);
      p.current[a] = std::move(p.shadow[a]);
      p.shadow[a] = Stored();
    }
  }
}

void NvmeStateStore::Abort() {
  std::lock_guard<std::mutex> lock(mu_);
  for (Piece& p : pieces_) {
    for (Stored& s : p.shadow) FreeStored(s);
  }
}

void NvmeStateStore::Free() {
  Abort();
  std::lock_guard<std::mutex> lock(mu_);
  for (Piece& p : pieces_) {
    for (Stored& s : p.current) FreeStored(s);
  }
}

uint64_t NvmeStateStore::nvme_bytes() const {
  uint64_t total = 0;
  for (const Piece& p : pieces_) {
    for (const Stored& s : p.current) total += s.valid ? s.extent.bytes : 0;
  }
  return total;
}

}  // namespace spill::server
