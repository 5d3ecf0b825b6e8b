// Gloo collectives through LibTorch's c10d::ProcessGroupGloo, and the
// c10d::TCPStore rendezvous shared with the NCCL implementation.
//
// The pip wheel of torch ships c10d's headers but not gloo's; gloo's headers
// come from Debian's libgloo-dev. Only its headers are used: every gloo
// symbol the code reaches lives inside libtorch_cpu (ProcessGroupGloo is
// constructed by its own out-of-line constructor there).
#include <ATen/ATen.h>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <cstdlib>
#include <mutex>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "worker/collectives.h"
#include "worker/collectives_internal.h"

namespace spill::worker {
namespace {

// Wraps a c10d::Work; `finish` runs once, after success (AVG division,
// conversion back from the communication dtype).
class C10dWork final : public Work {
 public:
  C10dWork(c10::intrusive_ptr<c10d::Work> work, std::function<void()> finish)
      : work_(std::move(work)), finish_(std::move(finish)) {}

  bool IsCompleted() override { return work_->isCompleted(); }

  absl::Status Wait(std::chrono::milliseconds timeout) override {
    std::lock_guard<std::mutex> lock(mu_);
    if (done_) return status_;
    try {
      work_->wait(timeout);
      if (finish_) finish_();
      status_ = absl::OkStatus();
    } catch (const std::exception& e) {
      if (!work_->isCompleted()) {
        return absl::DeadlineExceededError(
            absl::StrCat("gloo collective not complete after ", timeout.count(), " ms"));
      }
      status_ = absl::InternalError(absl::StrCat("gloo collective failed: ", e.what()));
    }
    done_ = true;
    finish_ = nullptr;
    return status_;
  }

 private:
  std::mutex mu_;
  c10::intrusive_ptr<c10d::Work> work_;
  std::function<void()> finish_;
  bool done_ = false;
  absl::Status status_;
};

std::shared_ptr<Work> Wrap(c10::intrusive_ptr<c10d::Work> work, std::function<void()> finish) {
  return std::make_shared<C10dWork>(std::move(work), std::move(finish));
}

// Runs a c10d call, turning its exceptions into a failed Work.
template <typename F>
std::shared_ptr<Work> Issue(const char* what, F&& f) {
  try {
    return f();
  } catch (const std::exception& e) {
    return CompletedWork(absl::InternalError(absl::StrCat("gloo ", what, ": ", e.what())));
  }
}

class GlooCollectives final : public Collectives {
 public:
  GlooCollectives(c10::intrusive_ptr<c10d::Store> store,
                  c10::intrusive_ptr<c10d::ProcessGroupGloo> pg, int rank, int world)
      : store_(std::move(store)), pg_(std::move(pg)), rank_(rank), world_(world) {}

  int rank() const override { return rank_; }
  int world_size() const override { return world_; }
  std::string backend() const override { return "gloo"; }

  std::shared_ptr<Work> AllGather(const at::Tensor& output, const at::Tensor& input) override {
    absl::Status ok = CheckAllGatherArgs(output, input, world_);
    if (!ok.ok()) return CompletedWork(ok);
    return Issue("all-gather", [&] {
      at::Tensor out = output, in = input;
      return Wrap(pg_->_allgather_base(out, in), nullptr);
    });
  }

  std::shared_ptr<Work> ReduceScatter(const at::Tensor& output, const at::Tensor& input,
                                      ReduceOp op,
                                      std::optional<at::ScalarType> comm) override {
    absl::Status ok = CheckReduceScatterArgs(output, input, world_);
    if (!ok.ok()) return CompletedWork(ok);
    return Issue("reduce-scatter", [&] {
      const bool convert = comm.has_value() && *comm != input.scalar_type();
      at::Tensor in = convert ? input.to(*comm) : input;
      at::Tensor out = convert ? at::empty({output.numel()}, output.options().dtype(*comm))
                               : output;
      const int world = world_;
      at::Tensor dst = output;
      auto finish = [in, out, dst, convert, op, world]() mutable {
        if (op == ReduceOp::kAvg) out.div_(world);
        if (convert) dst.copy_(out);
      };
      return Wrap(pg_->_reduce_scatter_base(out, in), finish);
    });
  }

  std::shared_ptr<Work> AllReduce(const at::Tensor& tensor, ReduceOp op) override {
    return Issue("all-reduce", [&] {
      std::vector<at::Tensor> tensors{tensor};
      at::Tensor t = tensor;
      const int world = world_;
      std::function<void()> finish;
      if (op == ReduceOp::kAvg) finish = [t, world]() mutable { t.div_(world); };
      return Wrap(pg_->allreduce(tensors), finish);
    });
  }

  std::shared_ptr<Work> Broadcast(const at::Tensor& tensor, int root) override {
    if (root < 0 || root >= world_) {
      return CompletedWork(absl::InvalidArgumentError(
          absl::StrCat("Broadcast: root ", root, " is outside [0, ", world_, ")")));
    }
    return Issue("broadcast", [&] {
      std::vector<at::Tensor> tensors{tensor};
      c10d::BroadcastOptions options;
      options.rootRank = root;
      return Wrap(pg_->broadcast(tensors, options), nullptr);
    });
  }

  absl::Status Barrier(std::chrono::milliseconds timeout) override {
    return Issue("barrier", [&] { return Wrap(pg_->barrier(), nullptr); })->Wait(timeout);
  }

 private:
  c10::intrusive_ptr<c10d::Store> store_;
  c10::intrusive_ptr<c10d::ProcessGroupGloo> pg_;
  int rank_;
  int world_;
};

std::shared_ptr<::gloo::transport::Device> MakeDevice(const RendezvousInfo& info) {
  const char* ifname = std::getenv("GLOO_SOCKET_IFNAME");
  if (ifname != nullptr && ifname[0] != '\0') {
    return c10d::ProcessGroupGloo::createDeviceForInterface(ifname);
  }
  if (absl::StartsWith(info.master_addr, "127.") || info.master_addr == "localhost") {
    return c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1");
  }
  return c10d::ProcessGroupGloo::createDefaultDevice();
}

}  // namespace

absl::StatusOr<c10::intrusive_ptr<c10d::Store>> ConnectTcpStore(
    const RendezvousInfo& info, std::chrono::milliseconds timeout) {
  c10d::TCPStoreOptions options;
  options.port = static_cast<uint16_t>(info.master_port);
  options.isServer = info.rank == 0;
  options.numWorkers = static_cast<size_t>(info.world_size);
  options.waitWorkers = true;
  options.timeout = timeout;
  try {
    return c10::intrusive_ptr<c10d::Store>(
        c10::make_intrusive<c10d::TCPStore>(info.master_addr, options));
  } catch (const std::exception& e) {
    return absl::UnavailableError(absl::StrCat(
        "rank ", info.rank, ": cannot ", info.rank == 0 ? "host" : "reach",
        " the rendezvous store at ", info.master_addr, ":", info.master_port, ": ", e.what()));
  }
}

absl::StatusOr<std::unique_ptr<Collectives>> CreateGlooCollectives(
    const RendezvousInfo& info, std::chrono::milliseconds timeout) {
  absl::StatusOr<c10::intrusive_ptr<c10d::Store>> store = ConnectTcpStore(info, timeout);
  if (!store.ok()) return store.status();
  try {
    auto options = c10d::ProcessGroupGloo::Options::create(timeout);
    options->devices.push_back(MakeDevice(info));
    auto prefixed = c10::make_intrusive<c10d::PrefixStore>("spill/gloo", *store);
    auto pg = c10::make_intrusive<c10d::ProcessGroupGloo>(prefixed, info.rank, info.world_size,
                                                          options);
    return std::unique_ptr<Collectives>(
        new GlooCollectives(*store, std::move(pg), info.rank, info.world_size));
  } catch (const std::exception& e) {
    return absl::UnavailableError(
        absl::StrCat("rank ", info.rank, ": cannot set up the gloo process group: ", e.what()));
  }
}

}  // namespace spill::worker
