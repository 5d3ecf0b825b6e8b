// libspill_client: a training rank's handle on the node's spilld.
//
// A Session is one rank's attachment to one job. Control goes over gRPC on
// spilld's Unix socket (one bidirectional stream per session, which is also
// the session's lease: when it ends, spilld drops the session's pins); data
// never does: objects live in memfd segments that the session maps once and,
// where a CUDA device is present, registers with cudaHostRegister once, so
// copies to and from the GPU are DMA straight from spilld's pages.
//
//   using namespace spill::client;
//   SessionOptions options;
//   options.job_id = "llama-7b";
//   options.rank = rank;
//   options.world_size = world_size;
//   absl::StatusOr<std::unique_ptr<Session>> session = Session::Open(options);
//   if (!session.ok()) return session.status();
//   absl::StatusOr<ObjectInfo> param = (*session)->Register(
//       "layer0.param", ObjectKind::kParamShard, DType::kBFloat16, n);
//   std::shared_ptr<Work> acquire = (*session)->Acquire(param->object_id);
//   absl::StatusOr<ObjectInfo> pinned = acquire->Get(std::chrono::seconds(30));
//   absl::StatusOr<absl::Span<uint16_t>> bits = (*session)->Data<uint16_t>(*pinned);
//   ...  // cudaMemcpyAsync(dst, bits->data(), bits->size() * 2, ...)
//   (*session)->WriteBack(param->object_id, step)->Wait();
//   (*session)->Release(param->object_id)->Wait();
//   (*session)->Close();
//
// This header and those it includes contain no gRPC or protobuf type.
#ifndef SPILL_CLIENT_CLIENT_H_
#define SPILL_CLIENT_CLIENT_H_

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "spill/export.h"
#include "spill/object.h"
#include "spill/work.h"

namespace spill::client {

// One of DeepSpeed's offload blocks for the job's objects with home kNvme:
// `offload_param` (parameter shards) or `offload_optimizer` (optimizer
// states). Every field must be > 0.
struct OffloadBudget {
  // How many of the stream's objects may be acquired (pinned) or being read
  // from NVMe at once (DeepSpeed's pinned swap buffers).
  uint32_t buffer_count = 0;
  // The largest object of the stream, in bytes; spilld refuses to register
  // a larger one. At most spilld's pinned pool.
  uint64_t buffer_size = 0;
  // Bytes (DeepSpeed counts elements: multiply by the element size) of the
  // stream's objects that may be resident in pinned memory at once; beyond
  // it spilld evicts the job's clean, unpinned ones. At least buffer_size.
  uint64_t max_in_cpu = 0;
};

struct SessionOptions {
  // spilld's Unix socket. Empty means DefaultSocketPath().
  std::string socket_path;
  // The job this rank belongs to; every rank of a job uses the same id.
  std::string job_id;
  int rank = 0;
  int world_size = 1;
  // Bound on each unary call (Open's handshake, Register, Free, List, Close)
  // and on each fd-channel exchange. Stream requests have no implicit
  // deadline: their Work's Wait() takes one.
  std::chrono::milliseconds timeout{10'000};
  // Register every mapped segment with cudaHostRegister (when the library is
  // built with CUDA and a device is present). Registration pins the pages
  // and is what makes H2D/D2H copies run at full DMA speed.
  bool register_with_cuda = true;
  // The job's offload budgets. Unset: spilld's defaults (no limit but its
  // pinned pool). The job's first session sets them; a later session of the
  // job may repeat them or leave them unset, while different ones make Open
  // fail with FailedPrecondition naming both. They need spilld's NVMe tier
  // (Open fails with FailedPrecondition on a spilld without --nvme-dirs).
  std::optional<OffloadBudget> param_budget;
  std::optional<OffloadBudget> optimizer_budget;
};

// $SPILL_SOCKET when set and non-empty, else "/run/spill/spilld.sock".
SPILL_CLIENT_EXPORT std::string DefaultSocketPath();

// Checks options without connecting: a non-empty job id, 0 <= rank <
// world_size, a positive timeout, a socket path that fits a sockaddr_un and
// budgets (when set) whose fields are > 0 with max_in_cpu >= buffer_size.
// InvalidArgument naming the offending field. (Session::Open runs this.)
SPILL_CLIENT_EXPORT absl::Status ValidateSessionOptions(const SessionOptions& options);

// How a session's segments are mapped and registered; cumulative.
struct MappingStats {
  uint64_t segments_mapped = 0;
  uint64_t bytes_mapped = 0;
  // Wall time spent receiving and mapping segments (including pre-faulting).
  double map_seconds = 0;
  // True when the library was built with CUDA support.
  bool cuda_compiled = false;
  uint64_t cuda_registered_segments = 0;
  uint64_t cuda_registered_bytes = 0;
  // Wall time spent inside cudaHostRegister.
  double cuda_register_seconds = 0;
  // Why segments are not being registered ("no CUDA device", "disabled by
  // SessionOptions::register_with_cuda", "built without CUDA"); empty when
  // they are.
  std::string cuda_skip_reason;
};

// One rank's session with spilld. Obtain one with Open; an implementation for
// tests may derive from it.
//
// Thread-safe: any thread may call any method concurrently, Close included.
// After Close (or once the connection to spilld is lost) every request fails
// without being sent: FailedPrecondition after Close, Unavailable naming the
// socket after a lost connection.
class SPILL_CLIENT_EXPORT Session {
 public:
  // Connects to spilld at options.socket_path, opens a session for
  // (job_id, rank, world_size), attaches its stream and opens the fd channel.
  // InvalidArgument for bad options; Unavailable ("cannot connect to spilld
  // at PATH: ...") when nothing listens there; PermissionDenied when the
  // socket may not be opened; DeadlineExceeded when spilld does not answer
  // within options.timeout; otherwise the error spilld answered with.
  static absl::StatusOr<std::unique_ptr<Session>> Open(const SessionOptions& options);

  // Closes the session if it is still open, ignoring errors.
  virtual ~Session();

  virtual const SessionOptions& options() const = 0;
  virtual uint64_t session_id() const = 0;
  // True when spilld already had this job (a re-attach): its objects remain.
  virtual bool job_existed() const = 0;
  // Every object's offset in its segment is a multiple of this.
  virtual uint64_t alignment_bytes() const = 0;

  // --- unary calls: each blocks for at most options().timeout -------------

  // Creates an object of num_elements elements of dtype, named uniquely
  // within the job. Returns its ObjectInfo. AlreadyExists when the name is
  // taken, ResourceExhausted past the job's quota, InvalidArgument for a bad
  // dtype, kind or count.
  // With home kNvme: FailedPrecondition when spilld has no NVMe tier,
  // ResourceExhausted past the job's NVMe quota.
  virtual absl::StatusOr<ObjectInfo> Register(const std::string& name, ObjectKind kind,
                                              DType dtype, int64_t num_elements,
                                              ObjectHome home) = 0;
  // Register with home kPinned.
  absl::StatusOr<ObjectInfo> Register(const std::string& name, ObjectKind kind, DType dtype,
                                      int64_t num_elements) {
    return Register(name, kind, dtype, num_elements, ObjectHome::kPinned);
  }
  // Deletes an object of the job. NotFound for an unknown id;
  // FailedPrecondition while it is pinned.
  virtual absl::Status Free(uint64_t object_id) = 0;
  // Every object of the job, in spilld's order.
  virtual absl::StatusOr<std::vector<ObjectInfo>> List() = 0;

  // --- stream requests: each returns at once; never null -------------------

  // Pins the object in the pinned tier (reading it back from NVMe first if
  // needed); the Work's object() has its current location.
  // for_write: the caller will write the bytes (then WriteBack before its
  // Release); for a kNvme object spilld then waits until no write-back is
  // reading them. The pin may be granted later than a read-only one.
  virtual std::shared_ptr<Work> Acquire(uint64_t object_id, bool for_write) = 0;
  std::shared_ptr<Work> Acquire(uint64_t object_id) { return Acquire(object_id, false); }
  // Asks spilld to bring the object into the pinned tier ahead of an
  // Acquire; does not pin it.
  virtual std::shared_ptr<Work> Prefetch(uint64_t object_id) = 0;
  // The order in which this job will use its objects in the coming step
  // (object ids, repeats allowed): spilld evicts NVMe-homed objects whose
  // next use is furthest first. The Work fails with InvalidArgument naming
  // an id that is not an object of the job (nothing changes then).
  virtual std::shared_ptr<Work> SetAccessOrder(std::vector<uint64_t> object_ids) = 0;
  // Drops one pin taken by this session's Acquire.
  virtual std::shared_ptr<Work> Release(uint64_t object_id) = 0;
  // Declares that the object's bytes now hold the result of step `version`
  // (which must not go backwards). The object must be pinned by this session.
  virtual std::shared_ptr<Work> WriteBack(uint64_t object_id, uint64_t version) = 0;
  // Waits (up to options().timeout) until every kNvme object of the job
  // written back before the call is durable: written to NVMe and recorded
  // in spilld's manifest, so it survives a crash of spilld. OK at once when
  // the job has no kNvme objects; the write's or manifest's error otherwise.
  virtual absl::Status Flush() = 0;
  // A round trip on the stream; completes OK while the session is healthy.
  virtual std::shared_ptr<Work> Ping() = 0;

  // --- the CPU optimizer in spilld (see spill/optimizer.h) -----------------
  // Creates an optimizer group over the job's parameter and gradient shards;
  // spilld allocates each member's fp32 master (copied from the parameter
  // shard's current bytes: write the initial parameters first) and states.
  // A group of that name with the same definition is returned with
  // existed = true (a re-attaching worker); with another definition,
  // AlreadyExists naming the difference. InvalidArgument for bad
  // hyper-parameters, dtypes or element counts (naming the member);
  // NotFound for an unknown object; ResourceExhausted past the quota.
  // Parameter shards may have home kNvme (offload_param.device = nvme):
  // spilld then acquires them itself for group creation and for each step
  // (reading them back from NVMe when evicted), writes the stepped values,
  // marks them written at the step number (written back to NVMe
  // asynchronously; the object's version becomes the step) and releases
  // them; Acquire after the step's Work completes returns the new values.
  // Do not hold a parameter acquired across its group's step. A step takes
  // all of its group's NVMe parameters at once: they must fit the job's
  // param_budget together (buffer_count objects, max_in_cpu bytes), else the
  // step fails with ResourceExhausted and changes nothing; a failed NVMe
  // read fails it with the tier's status, naming the parameter, and changes
  // nothing (retry the same step). Gradients must have home kPinned
  // (FailedPrecondition naming the gradient).
  virtual absl::StatusOr<GroupInfo> CreateGroup(const GroupSpec& spec) = 0;
  // Frees the group's master, states and accumulators. NotFound if unknown.
  virtual absl::Status DropGroup(uint64_t group_id) = 0;
  virtual absl::StatusOr<std::vector<GroupInfo>> ListGroups() = 0;
  // Checkpoint / restore of member member_index's fp32 master and optimizer
  // states, for groups that keep them on NVMe (states_on_nvme) as for pinned
  // ones. object_ids: objects of this job, the master's first, then one per
  // state in GroupMember::state_object_ids order (Adam: exp_avg,
  // exp_avg_sq); each kFloat32, home kPinned, exactly the member's
  // num_elements. kExport copies the member's values into them (then
  // Acquire and read them; their version becomes the group's last_step);
  // kImport makes their values the member's (write them and WriteBack
  // first). The group's step counters do not change: to resume at step S,
  // create the group with resume_step / resume_applied_steps and import.
  // Do not run the group's steps meanwhile (calls on a group serialise).
  // Blocks up to options().timeout. All or nothing; errors change nothing:
  // NotFound for an unknown group, member or object (one of another job
  // included); InvalidArgument for the wrong number of objects, a repeated
  // object, a group's parameter or gradient shard, a dtype other than
  // kFloat32 or another element count (naming the object and the count);
  // FailedPrecondition for an object with home kNvme; ResourceExhausted
  // without NVMe room for the imported state (it needs the member's NVMe
  // bytes a second time until committed); the NVMe tier's error for a
  // failed read or write (DataLoss for a checksum mismatch).
  virtual absl::Status CopyGroupState(uint64_t group_id, uint32_t member_index,
                                      GroupStateDirection direction,
                                      const std::vector<uint64_t>& object_ids) = 0;
  // The gradient shard grad_object_id now holds micro-step micro_step of
  // step `step`; the Work's sum_squares() is the member's accumulated sum of
  // squares. Do not overwrite the shard before the Work completes.
  virtual std::shared_ptr<Work> GradReady(uint64_t group_id, uint64_t grad_object_id,
                                          uint64_t step, uint32_t micro_step) = 0;
  // The same for a group without accumulation, with the shard's sum of
  // squares computed by the caller (e.g. on the GPU before the copy): spilld
  // records it instead of reading the shard, and the Work's sum_squares()
  // echoes it. InvalidArgument for a group that accumulates.
  virtual std::shared_ptr<Work> GradReadySummed(uint64_t group_id, uint64_t grad_object_id,
                                                uint64_t step, double sum_squares) = 0;
  // Runs the group's optimizer step `step` (its last step + 1) with this
  // learning rate, every gradient element multiplied by grad_scale (clip
  // coefficient / loss scale); skip records an overflowed step without
  // changing anything. The new parameters are in the parameter shards once
  // the Work completes; its step_outcome() says what happened. A step
  // already recorded is answered again (repeated), never applied twice.
  virtual std::shared_ptr<Work> OptimizerStep(uint64_t group_id, uint64_t step, float lr,
                                              float grad_scale, bool skip) = 0;
  // Speculative steps, for clipping: the clip coefficient needs the global
  // gradient norm, known only when backward ends, and a layer's step can run
  // while backward goes on only with a predicted grad_scale. This runs step
  // `step` with `predicted_grad_scale`; the group then waits (no gradient of
  // the next step, no other step, no state copy) until CommitOptimizerStep
  // of the same step gives the right grad_scale: spilld keeps the step when
  // the prediction was right and rescales it in one pass when it was not
  // (step_outcome().rescaled). Until the commit completes, the parameter
  // shards hold the speculative step's values. AdamW, or Adam without weight
  // decay, with states in pinned memory only (FailedPrecondition otherwise).
  virtual std::shared_ptr<Work> SpeculativeOptimizerStep(uint64_t group_id, uint64_t step,
                                                         float lr,
                                                         float predicted_grad_scale) = 0;
  virtual std::shared_ptr<Work> CommitOptimizerStep(uint64_t group_id, uint64_t step,
                                                    float grad_scale) = 0;

  // --- data ------------------------------------------------------------

  // The object's bytes (exactly object.byte_size() of them) in its segment,
  // mapping and registering the segment on first use. The span stays valid
  // until Close; its contents are the object's only while the object is
  // pinned. FailedPrecondition when the object is not resident
  // (object.location.size_bytes == 0) or the session is closed; OutOfRange
  // when the location does not fit the segment; the fd channel's, mmap's or
  // cudaHostRegister's error otherwise. The first call for a segment maps and
  // registers it (pinning runs at a few GB/s): call Bytes() on each object
  // before the training loop to keep that off the critical path.
  virtual absl::StatusOr<absl::Span<uint8_t>> Bytes(const ObjectInfo& object) = 0;

  // Bytes() viewed as num_elements values of T. T must be trivially
  // copyable, sizeof(T) must equal DTypeSize(object.dtype), and a
  // floating-point T needs a floating-point dtype: float for kFloat32,
  // double for kFloat64, a 16-bit type (uint16_t, at::BFloat16, at::Half)
  // for kBFloat16 and kFloat16. InvalidArgument naming both types otherwise.
  template <typename T>
  absl::StatusOr<absl::Span<T>> Data(const ObjectInfo& object);

  virtual MappingStats mapping_stats() const = 0;

  // Closes the session: fails every pending Work with Cancelled, tells
  // spilld (CloseSession), ends the stream, unregisters and unmaps every
  // segment. Spans from Bytes() and Data() must not be used afterwards. The
  // job's objects stay in spilld. Returns CloseSession's status; OK when
  // already closed.
  virtual absl::Status Close() = 0;

 protected:
  Session() = default;
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;
};

// Checks that a T of element_size bytes (a floating-point type when
// t_is_floating_point) may view the object's elements. See Session::Data.
SPILL_CLIENT_EXPORT absl::Status CheckElementType(const ObjectInfo& object, size_t element_size,
                                                  bool t_is_floating_point);

template <typename T>
absl::StatusOr<absl::Span<T>> Session::Data(const ObjectInfo& object) {
  static_assert(std::is_trivially_copyable_v<T>, "Session::Data<T> needs a trivially copyable T");
  absl::Status type_ok = CheckElementType(object, sizeof(T), std::is_floating_point_v<T>);
  if (!type_ok.ok()) return type_ok;
  absl::StatusOr<absl::Span<uint8_t>> bytes = Bytes(object);
  if (!bytes.ok()) return bytes.status();
  if (reinterpret_cast<uintptr_t>(bytes->data()) % alignof(T) != 0) {
    return absl::InternalError("object data is not aligned for the requested type");
  }
  return absl::Span<T>(reinterpret_cast<T*>(bytes->data()), bytes->size() / sizeof(T));
}

}  // namespace spill::client

#endif  // SPILL_CLIENT_CLIENT_H_
