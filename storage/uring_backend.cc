// The io_uring IoBackend (liburing).
#include <errno.h>
#include <liburing.h>
#include <sys/uio.h>

#include <atomic>
#include <cstring>
#include <memory>
#include <vector>

#include "absl/strings/str_cat.h"
#include "storage/io_backend.h"

namespace spill::storage {
namespace {

constexpr size_t kMaxFixedBuffer = size_t{1} << 30;

class UringBackend final : public IoBackend {
 public:
  explicit UringBackend(const UringOptions& options) : options_(options) {}

  ~UringBackend() override {
    if (!initialized_) return;
    // Every submitted request completes before the ring goes: the kernel may
    // still be writing into caller memory.
    while (in_flight_.load() > 0) {
      io_uring_cqe* cqe = nullptr;
      const int rc = io_uring_wait_cqe(&ring_, &cqe);
      if (rc == -EINTR || rc == -EAGAIN) continue;
      if (rc < 0) break;
      io_uring_cqe_seen(&ring_, cqe);
      in_flight_.fetch_sub(1);
    }
    io_uring_queue_exit(&ring_);
  }

  absl::Status Init() {
    if (options_.queue_depth == 0 || options_.queue_depth > 4096) {
      return absl::InvalidArgumentError(
          absl::StrCat("io_uring queue_depth must be 1..4096, got ", options_.queue_depth));
    }
    io_uring_params params;
    std::memset(&params, 0, sizeof(params));
    if (options_.sqpoll) {
      params.flags |= IORING_SETUP_SQPOLL;
      params.sq_thread_idle = options_.sqpoll_idle_ms;
    }
    const int rc = io_uring_queue_init_params(options_.queue_depth, &ring_, &params);
    if (rc < 0) {
      return absl::FailedPreconditionError(
          absl::StrCat("io_uring_queue_init(depth ", options_.queue_depth,
                       options_.sqpoll ? ", SQPOLL" : "", ") failed: ", std::strerror(-rc),
                       " (io_uring disabled or the feature not permitted here)"));
    }
    initialized_ = true;
    return absl::OkStatus();
  }

  absl::Status RegisterFiles(std::span<const int> fds) override {
    if (num_files_ > 0) return absl::FailedPreconditionError("io_uring files already registered");
    if (fds.empty()) return absl::InvalidArgumentError("RegisterFiles: no files");
    for (int fd : fds) {
      if (fd < 0) return absl::InvalidArgumentError(absl::StrCat("RegisterFiles: bad fd ", fd));
    }
    const int rc = io_uring_register_files(&ring_, fds.data(), static_cast<unsigned>(fds.size()));
    if (rc < 0) return absl::ErrnoToStatus(-rc, "io_uring_register_files");
    num_files_ = static_cast<int>(fds.size());
    return absl::OkStatus();
  }

  absl::Status RegisterBuffers(uint32_t slots) override {
    if (num_slots_ > 0) return absl::FailedPreconditionError("io_uring buffers already registered");
    if (slots == 0) return absl::InvalidArgumentError("RegisterBuffers: 0 slots");
    const int rc = io_uring_register_buffers_sparse(&ring_, slots);
    if (rc < 0) return absl::ErrnoToStatus(-rc, "io_uring_register_buffers_sparse");
    num_slots_ = slots;
    return absl::OkStatus();
  }

  absl::Status UpdateBuffer(uint32_t slot, void* addr, size_t len) override {
    if (len == 0 || len > kMaxFixedBuffer || addr == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("UpdateBuffer: length must be 1 byte..1 GiB at a non-null address, got ",
                       len));
    }
    return Update(slot, addr, len);
  }

  absl::Status ClearBuffer(uint32_t slot) override { return Update(slot, nullptr, 0); }

  absl::Status Submit(std::span<const IoRequest> requests) override {
    if (in_flight_.load() + requests.size() > options_.queue_depth) {
      return absl::ResourceExhaustedError(
          absl::StrCat("io_uring: ", requests.size(), " requests with ", in_flight_.load(),
                       " in flight exceed queue depth ", options_.queue_depth));
    }
    for (const IoRequest& r : requests) {
      if (r.file_index < 0 || r.file_index >= num_files_) {
        return absl::InvalidArgumentError(absl::StrCat("io_uring: file index ", r.file_index,
                                                       " not registered (", num_files_, ")"));
      }
      if (r.fixed_buf >= 0 && static_cast<uint32_t>(r.fixed_buf) >= num_slots_) {
        return absl::InvalidArgumentError(
            absl::StrCat("io_uring: fixed buffer slot ", r.fixed_buf, " outside the table"));
      }
    }
    for (const IoRequest& r : requests) {
      io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
      if (sqe == nullptr) {  // unreachable with the depth check; be safe
        if (absl::Status s = SubmitQueued(); !s.ok()) return s;
        sqe = io_uring_get_sqe(&ring_);
        if (sqe == nullptr) return absl::InternalError("io_uring: no free submission entry");
      }
      Prep(sqe, r);
      in_flight_.fetch_add(1);
      if (options_.single_submit) {
        if (absl::Status s = SubmitQueued(); !s.ok()) return s;
      }
    }
    return options_.single_submit ? absl::OkStatus() : SubmitQueued();
  }

  absl::StatusOr<int> Reap(std::span<IoCompletion> out, bool wait) override {
    if (out.empty()) return 0;
    if (wait) {
      io_uring_cqe* cqe = nullptr;
      for (;;) {
        const int rc = io_uring_wait_cqe(&ring_, &cqe);
        if (rc == 0) break;
        if (rc == -EINTR || rc == -EAGAIN) continue;
        return absl::ErrnoToStatus(-rc, "io_uring_wait_cqe");
      }
    }
    std::vector<io_uring_cqe*> cqes(out.size());
    const unsigned n = io_uring_peek_batch_cqe(&ring_, cqes.data(), static_cast<unsigned>(out.size()));
    for (unsigned i = 0; i < n; ++i) {
      out[i].user_data = io_uring_cqe_get_data64(cqes[i]);
      out[i].res = cqes[i]->res;
    }
    io_uring_cq_advance(&ring_, n);
    in_flight_.fetch_sub(n);
    return static_cast<int>(n);
  }

  uint32_t in_flight() const override { return in_flight_.load(); }
  uint32_t queue_depth() const override { return options_.queue_depth; }

 private:
  // Submits what is queued; retries the transient errors.

  absl::Status SubmitQueued() {
    for (int attempt = 0;; ++attempt) {
      const int rc = io_uring_submit(&ring_);
      if (rc >= 0) return absl::OkStatus();
      if ((rc == -EINTR || rc == -EAGAIN || rc == -EBUSY) && attempt < 100000) continue;
      return absl::ErrnoToStatus(-rc, "io_uring_submit");
    }
  }

  void Prep(io_uring_sqe* sqe, const IoRequest& r) {
    if (r.fixed_buf >= 0) {
      if (r.write) {
        io_uring_prep_write_fixed(sqe, r.file_index, r.buf, r.len, r.offset, r.fixed_buf);
      } else {
        io_uring_prep_read_fixed(sqe, r.file_index, r.buf, r.len, r.offset, r.fixed_buf);
      }
    } else if (r.write) {
      io_uring_prep_write(sqe, r.file_index, r.buf, r.len, r.offset);
    } else {
      io_uring_prep_read(sqe, r.file_index, r.buf, r.len, r.offset);
    }
    sqe->flags |= IOSQE_FIXED_FILE;
    io_uring_sqe_set_data64(sqe, r.user_data);
  }

  absl::Status Update(uint32_t slot, void* addr, size_t len) {
    if (num_slots_ == 0) return absl::FailedPreconditionError("io_uring buffers not registered");
    if (slot >= num_slots_) {
      return absl::OutOfRangeError(
          absl::StrCat("fixed buffer slot ", slot, " outside the table of ", num_slots_));
    }
    iovec iov{addr, len};
    __u64 tag = 0;
    const int rc = io_uring_register_buffers_update_tag(&ring_, slot, &iov, &tag, 1);
    if (rc < 0) {
      return absl::ErrnoToStatus(-rc, absl::StrCat("io_uring_register_buffers_update_tag(slot ",
                                                   slot, ", ", len, " bytes)"));
    }
    return absl::OkStatus();
  }

  const UringOptions options_;
  io_uring ring_{};
  bool initialized_ = false;
  int num_files_ = 0;
  uint32_t num_slots_ = 0;
  std::atomic<uint32_t> in_flight_{0};
};

}  // namespace

absl::StatusOr<std::unique_ptr<IoBackend>> MakeUringBackend(const UringOptions& options) {
  auto backend = std::make_unique<UringBackend>(options);
  absl::Status status = backend->Init();
  if (!status.ok()) return status;
  return std::unique_ptr<IoBackend>(std::move(backend));
}

}  // namespace spill::storage
