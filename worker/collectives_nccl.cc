// NCCL collectives, called directly (not through c10d's ProcessGroupNCCL) on
// a CUDA stream the engine owns, so they order with the engine's own H2D
// copies and compute. The unique id travels through the TCPStore.
//
// Each call first makes the communication stream wait for the caller's
// current CUDA stream (so tensors produced there are complete) and records
// the tensors' blocks on the communication stream with the caching
// allocator (so the caller may drop them at once), as c10d's
// ProcessGroupNCCL does. A Work records a CUDA event after the call;
// IsCompleted queries it, Wait polls it (and the communicator's async error)
// until the timeout, StreamWait makes the caller's current stream wait on it.
#include <ATen/ATen.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#include <nccl.h>

#include <cstring>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/status_macros.h"
#include "worker/collectives.h"
#include "worker/collectives_internal.h"

#if NCCL_VERSION_CODE < NCCL_VERSION(2, 18, 0)
#error "spill-train needs NCCL 2.18 or newer (ncclCommInitRankConfig, ncclAvg)"
#endif

namespace spill::worker {
namespace {

absl::Status CudaStatus(cudaError_t err, const char* what) {
  if (err == cudaSuccess) return absl::OkStatus();
  return absl::InternalError(absl::StrCat(what, ": ", cudaGetErrorString(err)));
}

absl::Status NcclStatus(ncclResult_t r, const char* what) {
  if (r == ncclSuccess) return absl::OkStatus();
  return absl::UnavailableError(absl::StrCat(what, ": ", ncclGetErrorString(r), " (",
                                             ncclGetLastError(nullptr), ")"));
}

absl::StatusOr<ncclDataType_t> NcclType(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return ncclFloat32;
    case at::kHalf: return ncclFloat16;
    case at::kBFloat16: return ncclBfloat16;
    case at::kDouble: return ncclFloat64;
    case at::kInt: return ncclInt32;
    case at::kLong: return ncclInt64;
    case at::kByte: return ncclUint8;
    case at::kChar: return ncclInt8;
    default:
      return absl::InvalidArgumentError(absl::StrCat("NCCL has no type for ", c10::toString(t)));
  }
}

class NcclWork final : public Work {
 public:
  NcclWork(cudaEvent_t event, ncclComm_t comm) : event_(event), comm_(comm) {}
  ~NcclWork() override { cudaEventDestroy(event_); }

  bool IsCompleted() override { return cudaEventQuery(event_) != cudaErrorNotReady; }

  absl::Status StreamWait(std::chrono::milliseconds timeout) override {
    ncclResult_t async = ncclSuccess;
    ncclCommGetAsyncError(comm_, &async);
    if (async != ncclSuccess && async != ncclInProgress) {
      return NcclStatus(async, "NCCL communicator failed");
    }
    return CudaStatus(cudaStreamWaitEvent(c10::cuda::getCurrentCUDAStream().stream(), event_, 0),
                      "cudaStreamWaitEvent");
  }

  absl::Status Wait(std::chrono::milliseconds timeout) override {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    while (true) {
      cudaError_t q = cudaEventQuery(event_);
      if (q == cudaSuccess) return absl::OkStatus();
      if (q != cudaErrorNotReady) return CudaStatus(q, "NCCL collective's event");
      ncclResult_t async = ncclSuccess;
      ncclCommGetAsyncError(comm_, &async);
      if (async != ncclSuccess && async != ncclInProgress) {
        return NcclStatus(async, "NCCL communicator failed");
      }
      if (std::chrono::steady_clock::now() >= deadline) {
        return absl::DeadlineExceededError(
            absl::StrCat("NCCL collective not complete after ", timeout.count(), " ms"));
      }
      std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
  }

 private:
  cudaEvent_t event_;
  ncclComm_t comm_;
};

class NcclCollectives final : public Collectives {
 public:
  NcclCollectives(ncclComm_t comm, cudaStream_t stream, bool own_stream, int device, int rank,
                  int world)
      : comm_(comm), stream_(stream), own_stream_(own_stream), device_(device), rank_(rank),
        world_(world) {
    cudaEventCreateWithFlags(&enter_event_, cudaEventDisableTiming);
  }
  ~NcclCollectives() override {
    cudaSetDevice(device_);
    cudaStreamSynchronize(stream_);
    cudaEventDestroy(enter_event_);
    ncclCommDestroy(comm_);
    if (own_stream_) cudaStreamDestroy(stream_);
  }

  int rank() const override { return rank_; }
  int world_size() const override { return world_; }
  std::string backend() const override { return "nccl"; }

  std::shared_ptr<Work> AllGather(const at::Tensor& output, const at::Tensor& input) override {
    absl::Status ok = CheckArgs(CheckAllGatherArgs(output, input, world_), input);
    if (!ok.ok()) return CompletedWork(ok);
    absl::StatusOr<ncclDataType_t> type = NcclType(input.scalar_type());
    if (!type.ok()) return CompletedWork(type.status());
    if (absl::Status e = Enter({input, output}); !e.ok()) return CompletedWork(e);
    return Finish(NcclStatus(ncclAllGather(input.data_ptr(), output.data_ptr(), input.numel(),
                                           *type, comm_, stream_),
                             "ncclAllGather"));
  }

  std::shared_ptr<Work> ReduceScatter(const at::Tensor& output, const at::Tensor& input,
                                      ReduceOp op,
                                      std::optional<at::ScalarType> comm) override {
    absl::Status ok = CheckArgs(CheckReduceScatterArgs(output, input, world_), input);
    if (!ok.ok()) return CompletedWork(ok);
    const bool convert = comm.has_value() && *comm != input.scalar_type();
    absl::StatusOr<ncclDataType_t> type = NcclType(convert ? *comm : input.scalar_type());
    if (!type.ok()) return CompletedWork(type.status());
    if (absl::Status e = Enter({input, output}); !e.ok()) return CompletedWork(e);
    // Conversions run on the communication stream too; temporaries are
    // allocated there, so the caching allocator reuses them only after it.
    at::Tensor in = input, out = output;
    if (convert) {
      c10::cuda::CUDAStreamGuard guard(c10::cuda::getStreamFromExternal(stream_, device_));
      in = input.to(*comm);
      out = at::empty({output.numel()}, output.options().dtype(*comm));
    }
    absl::Status s = NcclStatus(ncclReduceScatter(in.data_ptr(), out.data_ptr(), out.numel(),
                                                  *type, op == ReduceOp::kAvg ? ncclAvg : ncclSum,
                                                  comm_, stream_),
                                "ncclReduceScatter");
    if (s.ok() && convert) {
      c10::cuda::CUDAStreamGuard guard(c10::cuda::getStreamFromExternal(stream_, device_));
      at::Tensor dst = output;
      dst.copy_(out);
    }
    return Finish(s);
  }

  std::shared_ptr<Work> AllReduce(const at::Tensor& tensor, ReduceOp op) override {
    absl::Status ok = CheckArgs(absl::OkStatus(), tensor);
    if (!ok.ok()) return CompletedWork(ok);
    absl::StatusOr<ncclDataType_t> type = NcclType(tensor.scalar_type());
    if (!type.ok()) return CompletedWork(type.status());
    if (absl::Status e = Enter({tensor}); !e.ok()) return CompletedWork(e);
    return Finish(NcclStatus(ncclAllReduce(tensor.data_ptr(), tensor.data_ptr(), tensor.numel(),
                                           *type, op == ReduceOp::kAvg ? ncclAvg : ncclSum,
                                           comm_, stream_),
                             "ncclAllReduce"));
  }

  std::shared_ptr<Work> Broadcast(const at::Tensor& tensor, int root) override {
    if (root < 0 || root >= world_) {
      return CompletedWork(absl::InvalidArgumentError(
          absl::StrCat("Broadcast: root ", root, " is outside [0, ", world_, ")")));
    }
    absl::Status ok = CheckArgs(absl::OkStatus(), tensor);
    if (!ok.ok()) return CompletedWork(ok);
    absl::StatusOr<ncclDataType_t> type = NcclType(tensor.scalar_type());
    if (!type.ok()) return CompletedWork(type.status());
    if (absl::Status e = Enter({tensor}); !e.ok()) return CompletedWork(e);
    return Finish(NcclStatus(ncclBroadcast(tensor.data_ptr(), tensor.data_ptr(), tensor.numel(),
                                           *type, root, comm_, stream_),
                             "ncclBroadcast"));
  }

  absl::Status Barrier(std::chrono::milliseconds timeout) override {
    // A one-element all-reduce, as c10d's ProcessGroupNCCL::barrier does.
    at::Tensor t;
    {
      c10::cuda::CUDAStreamGuard guard(c10::cuda::getStreamFromExternal(stream_, device_));
      t = at::zeros({1}, at::TensorOptions().dtype(at::kFloat).device(at::kCUDA, device_));
    }
    return AllReduce(t, ReduceOp::kSum)->Wait(timeout);
  }

 private:
  absl::Status CheckArgs(absl::Status shape, const at::Tensor& t) const {
    if (!shape.ok()) return shape;
    if (!t.is_cuda() || t.get_device() != device_) {
      return absl::InvalidArgumentError(
          absl::StrCat("NCCL collectives need CUDA tensors on device ", device_));
    }
    if (!t.is_contiguous()) return absl::InvalidArgumentError("tensors must be contiguous");
    return absl::OkStatus();
  }

  // The communication stream waits for the caller's current stream; the
  // tensors' blocks are marked in use by the communication stream.
  absl::Status Enter(std::initializer_list<at::Tensor> tensors) {
    cudaStream_t current = c10::cuda::getCurrentCUDAStream(device_).stream();
    if (current != stream_) {
      SPILL_RETURN_IF_ERROR(CudaStatus(cudaEventRecord(enter_event_, current), "cudaEventRecord"));
      SPILL_RETURN_IF_ERROR(CudaStatus(cudaStreamWaitEvent(stream_, enter_event_, 0),
                                "cudaStreamWaitEvent"));
    }
    c10::cuda::CUDAStream comm = c10::cuda::getStreamFromExternal(stream_, device_);
    for (const at::Tensor& t : tensors) {
      if (t.storage().data_ptr().get() != nullptr) {
        c10::cuda::CUDACachingAllocator::recordStream(t.storage().data_ptr(), comm);
      }
    }
    return absl::OkStatus();
  }

  std::shared_ptr<Work> Finish(absl::Status issued) {
    if (!issued.ok()) return CompletedWork(issued);
    cudaEvent_t event;
    absl::Status s = CudaStatus(cudaEventCreateWithFlags(&event, cudaEventDisableTiming),
                                "cudaEventCreate");
    if (s.ok()) s = CudaStatus(cudaEventRecord(event, stream_), "cudaEventRecord");
    if (!s.ok()) return CompletedWork(s);
    return std::make_shared<NcclWork>(event, comm_);
  }

  ncclComm_t comm_;
  cudaStream_t stream_;
  cudaEvent_t enter_event_ = nullptr;
  bool own_stream_;
  int device_;
  int rank_;
  int world_;
};

}  // namespace

bool NcclAvailable() { return true; }

std::string DeviceMemorySummary(int device) {
  if (device < 0) return "";
  const c10::CachingDeviceAllocator::DeviceStats stats =
      c10::cuda::CUDACachingAllocator::getDeviceStats(static_cast<c10::DeviceIndex>(device));
  const auto& allocated = stats.allocated_bytes[0];  // StatType::AGGREGATE
  return absl::StrFormat(", gpu %d: allocated %.2f GiB (peak %.2f GiB)", device,
                         allocated.current / 1073741824.0, allocated.peak / 1073741824.0);
}

int64_t DevicePeakBytes(int device) {
  if (device < 0) return -1;
  return c10::cuda::CUDACachingAllocator::getDeviceStats(static_cast<c10::DeviceIndex>(device))
      .allocated_bytes[0]
      .peak;
}

absl::StatusOr<std::unique_ptr<Collectives>> CreateNcclCollectives(
    const RendezvousInfo& info, int device, void* stream, std::chrono::milliseconds timeout) {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
    return absl::FailedPreconditionError("NCCL collectives need a CUDA device; none is present");
  }
  if (device < 0 || device >= count) {
    return absl::InvalidArgumentError(
        absl::StrCat("CUDA device ", device, " does not exist (", count, " present)"));
  }
  absl::StatusOr<c10::intrusive_ptr<c10d::Store>> store = ConnectTcpStore(info, timeout);
  if (!store.ok()) return store.status();
  ncclUniqueId id;
  const std::string key = "spill/nccl/unique_id";
  try {
    if (info.rank == 0) {
      absl::Status s = NcclStatus(ncclGetUniqueId(&id), "ncclGetUniqueId");
      if (!s.ok()) return s;
      const uint8_t* bytes = reinterpret_cast<const uint8_t*>(&id);
      (*store)->set(key, std::vector<uint8_t>(bytes, bytes + sizeof(id)));
    } else {
      std::vector<uint8_t> bytes = (*store)->get(key);
      if (bytes.size() != sizeof(id)) {
        return absl::UnavailableError("rendezvous store holds a malformed NCCL unique id");
      }
      std::memcpy(&id, bytes.data(), sizeof(id));
    }
  } catch (const std::exception& e) {
    return absl::UnavailableError(absl::StrCat("NCCL unique id exchange failed: ", e.what()));
  }
  if (cudaSetDevice(device) != cudaSuccess) {
    return absl::InternalError(absl::StrCat("cudaSetDevice(", device, ") failed"));
  }
  ncclComm_t comm;
  absl::Status s = NcclStatus(ncclCommInitRank(&comm, info.world_size, id, info.rank),
                              "ncclCommInitRank");
  if (!s.ok()) return s;
  cudaStream_t cuda_stream = static_cast<cudaStream_t>(stream);
  const bool own = cuda_stream == nullptr;
  if (own) {
    s = CudaStatus(cudaStreamCreateWithFlags(&cuda_stream, cudaStreamNonBlocking),
                   "cudaStreamCreate");
    if (!s.ok()) {
      ncclCommDestroy(comm);
      return s;
    }
  }
  return std::unique_ptr<Collectives>(
      new NcclCollectives(comm, cuda_stream, own, device, info.rank, info.world_size));
}

}  // namespace spill::worker
