// The fault-injecting IoBackend wrapper and FlipBitInFile.
#include <errno.h>
#include <fcntl.h>
#include <unistd.h>

#include <cstdlib>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "absl/strings/str_cat.h"
#include "storage/io_backend.h"

namespace spill::storage {
namespace {

class FaultyBackend final : public IoBackend {
 public:
  FaultyBackend(std::unique_ptr<IoBackend> inner, FaultPlan plan)
      : inner_(std::move(inner)), plan_(std::move(plan)) {
    if (plan_.counters == nullptr) plan_.counters = std::make_shared<FaultCounters>();
  }

  absl::Status RegisterFiles(std::span<const int> fds) override {
    return inner_->RegisterFiles(fds);
  }
  absl::Status RegisterBuffers(uint32_t slots) override { return inner_->RegisterBuffers(slots); }
  absl::Status UpdateBuffer(uint32_t slot, void* addr, size_t len) override {
    return inner_->UpdateBuffer(slot, addr, len);
  }
  absl::Status ClearBuffer(uint32_t slot) override { return inner_->ClearBuffer(slot); }

  absl::Status Submit(std::span<const IoRequest> requests) override {
    std::vector<IoRequest> changed(requests.begin(), requests.end());
    std::vector<std::pair<uint64_t, const FaultRule*>> marked;
    for (IoRequest& r : changed) {
      const FaultRule* rule = Match(r);
      if (rule == nullptr) continue;
      plan_.counters->injected.fetch_add(1);
      if (rule->kind == FaultKind::kShort) {
        const uint32_t half = (r.len / 2) & ~uint32_t{4095};
        r.len = half >= 4096 ? half : 4096;
        if (r.len >= requests[&r - changed.data()].len) continue;  // cannot shorten 4 KiB
      } else {
        marked.emplace_back(r.user_data, rule);
      }
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (const auto& [tag, rule] : marked) result_faults_[tag] = rule;
    }
    absl::Status status = inner_->Submit(changed);
    if (!status.ok()) {
      std::lock_guard<std::mutex> lock(mu_);
      for (const auto& m : marked) result_faults_.erase(m.first);
    }
    return status;
  }

  absl::StatusOr<int> Reap(std::span<IoCompletion> out, bool wait) override {
    absl::StatusOr<int> n = inner_->Reap(out, wait);
    if (!n.ok() || *n == 0) return n;
    std::lock_guard<std::mutex> lock(mu_);
    if (result_faults_.empty()) return n;
    for (int i = 0; i < *n; ++i) {
      auto it = result_faults_.find(out[i].user_data);
      if (it == result_faults_.end()) continue;
      out[i].res = it->second->kind == FaultKind::kZeroRead ? 0 : -it->second->err;
      result_faults_.erase(it);
    }
    return n;
  }

  uint32_t in_flight() const override { return inner_->in_flight(); }
  uint32_t queue_depth() const override { return inner_->queue_depth(); }

 private:
  // Counts r in its direction and returns the first rule covering it.
  const FaultRule* Match(const IoRequest& r) {
    const uint64_t dir_index =
        r.write ? plan_.counters->writes.fetch_add(1) : plan_.counters->reads.fetch_add(1);
    const uint64_t any_index = any_count_++;
    for (const FaultRule& rule : plan_.rules) {
      uint64_t index = any_index;
      if (rule.direction == FaultDirection::kRead) {
        if (r.write) continue;
        index = dir_index;
      } else if (rule.direction == FaultDirection::kWrite) {
        if (!r.write) continue;
        index = dir_index;
      }
      if (index >= rule.nth && index - rule.nth < rule.count) return &rule;
    }
    return nullptr;
  }

  std::unique_ptr<IoBackend> inner_;
  FaultPlan plan_;
  uint64_t any_count_ = 0;  // submitting thread only
  std::mutex mu_;           // result_faults_: submitter and reaper
  std::unordered_map<uint64_t, const FaultRule*> result_faults_;
};

}  // namespace

std::unique_ptr<IoBackend> MakeFaultyBackend(std::unique_ptr<IoBackend> inner, FaultPlan plan) {
  return std::make_unique<FaultyBackend>(std::move(inner), std::move(plan));
}

absl::Status FlipBitInFile(const std::string& path, uint64_t offset, int bit) {
  if (bit < 0 || bit > 7) return absl::InvalidArgumentError(absl::StrCat("bit ", bit, " not 0..7"));
  // Read-modify-write the 4 KiB page with O_DIRECT so no stale page-cache
  // copy can hide the change from the tier's O_DIRECT reads.
  int fd = ::open(path.c_str(), O_RDWR | O_DIRECT | O_CLOEXEC);
  const bool direct = fd >= 0;
  if (!direct) fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
  if (fd < 0) return absl::ErrnoToStatus(errno, absl::StrCat("open ", path));
  const off_t size = ::lseek(fd, 0, SEEK_END);
  if (size < 0 || offset >= static_cast<uint64_t>(size)) {
    ::close(fd);
    return absl::OutOfRangeError(absl::StrCat("offset ", offset, " past the end of ", path));
  }
  const uint64_t page = offset & ~uint64_t{4095};
  void* buf = std::aligned_alloc(4096, 4096);
  absl::Status status;
  if (::pread(fd, buf, 4096, static_cast<off_t>(page)) < static_cast<ssize_t>(offset - page + 1)) {
    status = absl::ErrnoToStatus(errno, absl::StrCat("pread ", path));
  } else {
    static_cast<uint8_t*>(buf)[offset - page] ^= static_cast<uint8_t>(1u << bit);
    const size_t n = std::min<uint64_t>(4096, static_cast<uint64_t>(size) - page);
    if (::pwrite(fd, buf, direct ? 4096 : n, static_cast<off_t>(page)) < 0 || ::fsync(fd) != 0) {
      status = absl::ErrnoToStatus(errno, absl::StrCat("pwrite/fsync ", path));
    }
  }
  std::free(buf);
  ::close(fd);
  return status;
}

}  // namespace spill::storage
