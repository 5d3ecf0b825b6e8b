// nvme_gpu_prefetch: a ZeRO-Infinity parameter prefetch, NVMe -> spilld's
// pinned tier -> GPU, against O_DIRECT reads into a cudaMallocHost buffer
// followed by cudaMemcpyAsync H2D, on the same disk in the same run.
//
//   nvme_gpu [--dir=DIR] [--sizes=16MiB,64MiB,256MiB] [--total=2GiB]
//            [--prefetch-depth=3] [--repeat=1] [--no-gpu] [--machine=NAME]
//            [--spilld-flag=--aio-queue-depth=64 ...]
//
// Per object size, total/size objects go through each path in order.
// Ours: a real spilld with an NVMe tier under DIR holds them as parameter
// shards with home kNvme; the job's param_budget (buffer_count = depth + 2,
// max_in_cpu = buffer_count objects) keeps only the objects in flight in
// pinned memory, and before each timed pass never-written filler objects,
// acquired together, push every parameter out of it. A pass sets the access
// order, keeps `depth` Prefetches ahead of the Acquire, copies each acquired
// object from its mapped (cudaHostRegister'ed) bytes to the GPU on one
// stream and Releases it once the copy is done (two copies in flight).
// spilld's reads counter must show every object read from NVMe in the pass.
// Baseline: the same bytes in one file, read with O_DIRECT one object at a
// time into two cudaMallocHost buffers (read k+1 while k copies).
// Both paths copy three 64-byte samples of every object back from the GPU;
// they are compared with the written pattern after the pass.
//
// --no-gpu measures NVMe -> pinned only (ours: prefetch, acquire, release;
// baseline: O_DIRECT reads into one aligned buffer), samples read on the
// CPU. Without --no-gpu and without a CUDA device it exits 77.
// Each of --repeat runs times both paths, alternating which goes first. One
// JSON line per size; ratio = ours / baseline (GB/s, medians of the runs).
// DIR needs O_DIRECT (a disk file system); the run's files go into a fresh
// DIR/run-XXXXXX, removed at the end (and DIR too when this made it).
#include <cuda_runtime.h>
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "bench/bench_json.h"
#include "common/status_macros.h"
#include "common/units.h"
#include "spill/client.h"
#include "tests/integration/metric_value.h"
#include "tests/integration/spilld_process.h"

namespace spill::bench {
namespace {

using client::ObjectHome;
using client::Session;
using client::Work;

constexpr uint64_t kMiB = 1ull << 20;
constexpr int kSamples = 3;
constexpr uint64_t kSampleBytes = 64;
constexpr std::chrono::milliseconds kWait = std::chrono::minutes(2);

struct Flags {
  std::string dir = "/var/tmp/spill-nvme-gpu-bench";
  std::vector<uint64_t> sizes = {16 * kMiB, 64 * kMiB, 256 * kMiB};
  uint64_t total = 2048 * kMiB;
  uint32_t depth = 3;
  int repeat = 1;
  bool gpu = true;
  std::string machine;
  std::vector<std::string> spilld_flags;
};

absl::Status Cuda(cudaError_t err, const char* what) {
  if (err == cudaSuccess) return absl::OkStatus();
  return absl::InternalError(absl::StrCat(what, ": ", cudaGetErrorString(err)));
}
#define SPILL_BENCH_CUDA(expr) SPILL_RETURN_IF_ERROR(Cuda((expr), #expr))

uint64_t RoundUp(uint64_t v, uint64_t to) { return (v + to - 1) / to * to; }

double Seconds(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// The content every path moves: 64-bit word g of the parameter stream (byte
// 8g, whatever the object size) holds a distinct non-zero value, so a wrong,
// stale or zeroed object cannot pass for the right one.
uint64_t PatternWord(uint64_t g) { return (g + 1) * 0x9E3779B97F4A7C15ull; }

void FillPattern(uint8_t* dst, uint64_t first_byte, uint64_t bytes) {
  uint64_t* words = reinterpret_cast<uint64_t*>(dst);
  const uint64_t g0 = first_byte / 8;
  for (uint64_t w = 0; w < bytes / 8; ++w) words[w] = PatternWord(g0 + w);
}

// Start, somewhere in the middle, end of object `index`.
uint64_t SampleOffset(uint64_t index, uint64_t bytes, int s) {
  if (s == 0) return 0;
  if (s == 2) return bytes - kSampleBytes;
  return ((index * 7919 + 1) * 4096 + 64 * index) % (bytes - kSampleBytes) / 64 * 64;
}

// Where the bytes go: with a GPU, H2D into one of two device slots on one
// stream (two copies in flight), then each sample D2H into pinned memory;
// without one, the samples are read on the CPU and nothing else happens.
// Also owns the baseline's staging buffers (pinned with a GPU).
class Destination {
 public:
  static absl::StatusOr<std::unique_ptr<Destination>> Create(bool gpu, uint64_t max_bytes,
                                                             uint64_t max_objects) {
    std::unique_ptr<Destination> d(new Destination(gpu));
    const uint64_t sample_bytes = max_objects * kSamples * kSampleBytes;
    if (!gpu) {
      d->staging_[0] = static_cast<uint8_t*>(std::aligned_alloc(4096, RoundUp(max_bytes, 4096)));
      d->samples_ = static_cast<uint8_t*>(std::malloc(sample_bytes));
      if (d->staging_[0] == nullptr || d->samples_ == nullptr) {
        return absl::ResourceExhaustedError("cannot allocate the host buffers");
      }
      return d;
    }
    SPILL_BENCH_CUDA(cudaStreamCreateWithFlags(&d->stream_, cudaStreamNonBlocking));
    for (int k = 0; k < 2; ++k) {
      SPILL_BENCH_CUDA(cudaMalloc(&d->device_[k], max_bytes));
      SPILL_BENCH_CUDA(cudaMallocHost(&d->staging_[k], max_bytes));
      SPILL_BENCH_CUDA(cudaEventCreateWithFlags(&d->events_[k], cudaEventDisableTiming));
      if (reinterpret_cast<uintptr_t>(d->staging_[k]) % 4096 != 0) {
        return absl::InternalError("cudaMallocHost returned memory not aligned for O_DIRECT");
      }
    }
    SPILL_BENCH_CUDA(cudaMallocHost(reinterpret_cast<void**>(&d->samples_), sample_bytes));
    return d;
  }

  ~Destination() {
    if (!gpu_) {
      std::free(staging_[0]);
      std::free(samples_);
      return;
    }
    for (int k = 0; k < 2; ++k) {
      if (events_[k] != nullptr) cudaEventDestroy(events_[k]);
      if (device_[k] != nullptr) cudaFree(device_[k]);
      if (staging_[k] != nullptr) cudaFreeHost(staging_[k]);
    }
    if (samples_ != nullptr) cudaFreeHost(samples_);
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
  }

  // Copies that may be in flight at once; the baseline has as many buffers.
  uint64_t in_flight() const { return gpu_ ? 2 : 1; }
  uint8_t* staging(uint64_t index) { return staging_[index % in_flight()]; }

  // Starts moving object `index`'s bytes from src.
  absl::Status Copy(uint64_t index, const uint8_t* src, uint64_t bytes) {
    uint8_t* samples = samples_ + index * kSamples * kSampleBytes;
    if (!gpu_) {
      for (int s = 0; s < kSamples; ++s) {
        std::memcpy(samples + s * kSampleBytes, src + SampleOffset(index, bytes, s), kSampleBytes);
      }
      return absl::OkStatus();
    }
    uint8_t* dst = static_cast<uint8_t*>(device_[index % 2]);
    SPILL_BENCH_CUDA(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream_));
    for (int s = 0; s < kSamples; ++s) {
      SPILL_BENCH_CUDA(cudaMemcpyAsync(samples + s * kSampleBytes,
                                       dst + SampleOffset(index, bytes, s), kSampleBytes,
                                       cudaMemcpyDeviceToHost, stream_));
    }
    SPILL_BENCH_CUDA(cudaEventRecord(events_[index % 2], stream_));
    return absl::OkStatus();
  }

  // Waits until Copy(index) is done (with fewer than in_flight() later
  // copies started since).
  absl::Status WaitCopied(uint64_t index) {
    if (gpu_) SPILL_BENCH_CUDA(cudaEventSynchronize(events_[index % 2]));
    return absl::OkStatus();
  }

  void ClearSamples(uint64_t objects) {
    std::memset(samples_, 0, objects * kSamples * kSampleBytes);
  }

  // Compares every object's samples with the pattern.
  absl::Status Verify(const char* who, uint64_t objects, uint64_t bytes) const {
    for (uint64_t i = 0; i < objects; ++i) {
      for (int s = 0; s < kSamples; ++s) {
        const uint64_t off = SampleOffset(i, bytes, s);
        std::vector<uint8_t> want(kSampleBytes);
        FillPattern(want.data(), i * bytes + off, kSampleBytes);
        const uint8_t* got = samples_ + (i * kSamples + s) * kSampleBytes;
        if (std::memcmp(got, want.data(), kSampleBytes) != 0) {
          return absl::DataLossError(absl::StrCat(who, ": object ", i, " (", bytes,
                                                  " bytes) differs from the written pattern at ",
                                                  "byte ", off, gpu_ ? " on the GPU" : ""));
        }
      }
    }
    return absl::OkStatus();
  }

 private:
  explicit Destination(bool gpu) : gpu_(gpu) {}

  const bool gpu_;
  cudaStream_t stream_ = nullptr;
  void* device_[2] = {nullptr, nullptr};
  cudaEvent_t events_[2] = {nullptr, nullptr};
  uint8_t* staging_[2] = {nullptr, nullptr};
  uint8_t* samples_ = nullptr;
};

absl::Status FullIo(bool write, int fd, uint8_t* buf, uint64_t bytes, uint64_t offset) {
  for (uint64_t done = 0; done < bytes;) {
    const ssize_t n = write ? ::pwrite(fd, buf + done, bytes - done, offset + done)
                            : ::pread(fd, buf + done, bytes - done, offset + done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return absl::ErrnoToStatus(errno, write ? "pwrite" : "pread");
    if (n == 0) return absl::DataLossError("baseline file ends early");
    done += static_cast<uint64_t>(n);
  }
  return absl::OkStatus();
}

// Writes the baseline's file with O_DIRECT, durable before it is read.
absl::Status WriteBaselineFile(const std::string& path, Destination& dest, uint64_t objects,
                               uint64_t bytes) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_DIRECT | O_CLOEXEC, 0600);
  if (fd < 0) return absl::ErrnoToStatus(errno, absl::StrCat("open ", path));
  absl::Status s;
  for (uint64_t k = 0; k < objects && s.ok(); ++k) {
    FillPattern(dest.staging(0), k * bytes, bytes);
    s = FullIo(true, fd, dest.staging(0), bytes, k * bytes);
  }
  if (s.ok() && ::fdatasync(fd) != 0) s = absl::ErrnoToStatus(errno, "fdatasync");
  ::close(fd);
  return s;
}

// One timed baseline pass; returns its seconds.
absl::StatusOr<double> BaselinePass(const std::string& path, Destination& dest, uint64_t objects,
                                    uint64_t bytes) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_DIRECT | O_CLOEXEC);
  if (fd < 0) return absl::ErrnoToStatus(errno, absl::StrCat("open ", path));
  const uint64_t n = dest.in_flight();
  const auto t0 = std::chrono::steady_clock::now();
  absl::Status s;
  for (uint64_t k = 0; k < objects && s.ok(); ++k) {
    if (k >= n) s = dest.WaitCopied(k - n);
    if (s.ok()) s = FullIo(false, fd, dest.staging(k), bytes, k * bytes);
    if (s.ok()) s = dest.Copy(k, dest.staging(k), bytes);
  }
  for (uint64_t k = objects > n ? objects - n : 0; k < objects && s.ok(); ++k) {
    s = dest.WaitCopied(k);
  }
  const double seconds = Seconds(t0);
  ::close(fd);
  if (!s.ok()) return s;
  return seconds;
}

// spilld with the job's parameters on its NVMe tier.
struct Ours {
  std::unique_ptr<testing::SpilldProcess> daemon;
  std::unique_ptr<Session> session;
  std::vector<uint64_t> params;  // in prefetch order
  // Never written; acquired together they fill max_in_cpu, evicting every parameter.
  std::vector<uint64_t> fillers;
  uint32_t buffer_count = 0;
};

absl::StatusOr<Ours> StartOurs(const Flags& f, const std::string& nvme_dir, uint64_t objects,
                               uint64_t bytes) {
  Ours o;
  o.buffer_count = f.depth + 2;  // one copy in flight + the acquired one + depth ahead
  // One segment for the whole pool, mapped and registered while filling.
  const uint64_t pool = (o.buffer_count + 1) * RoundUp(bytes, 2 * kMiB);
  const uint64_t capacity = objects * RoundUp(bytes, kMiB) + 64 * kMiB;
  std::vector<std::string> flags = {
      "--pinned-bytes=" + std::to_string(pool), "--segment-bytes=" + std::to_string(pool),
      "--nvme-dirs=" + nvme_dir, "--nvme-capacity=" + std::to_string(capacity),
      "--metrics-address=127.0.0.1:0"};
  flags.insert(flags.end(), f.spilld_flags.begin(), f.spilld_flags.end());
  SPILL_ASSIGN_OR_RETURN(o.daemon, testing::SpilldProcess::Start(flags));
  client::SessionOptions so;
  so.socket_path = o.daemon->socket_path();
  so.job_id = "nvme-gpu";
  so.timeout = std::chrono::minutes(5);  // Flush waits for every write-back
  so.param_budget = client::OffloadBudget{o.buffer_count, bytes, o.buffer_count * bytes};
  SPILL_ASSIGN_OR_RETURN(o.session, Session::Open(so));
  for (uint64_t i = 0; i < objects + o.buffer_count; ++i) {
    const bool param = i < objects;
    const std::string name =
        param ? absl::StrCat("param.", i) : absl::StrCat("filler.", i - objects);
    SPILL_ASSIGN_OR_RETURN(
        client::ObjectInfo info,
        o.session->Register(name, client::ObjectKind::kParamShard, client::DType::kBFloat16,
                            static_cast<int64_t>(bytes / 2), ObjectHome::kNvme));
    (param ? o.params : o.fillers).push_back(info.object_id);
  }
  return o;
}

// Writes every parameter (acquire for write, pattern, write-back, release),
// then waits until all are on NVMe. Returns the seconds it took.
absl::StatusOr<double> FillOurs(Ours& o, bool gpu, uint64_t bytes) {
  Session& s = *o.session;
  const auto t0 = std::chrono::steady_clock::now();
  for (uint64_t i = 0; i < o.params.size(); ++i) {
    SPILL_ASSIGN_OR_RETURN(client::ObjectInfo obj, s.Acquire(o.params[i], true)->Get(kWait));
    SPILL_ASSIGN_OR_RETURN(absl::Span<uint8_t> span, s.Bytes(obj));
    if (gpu && s.mapping_stats().cuda_registered_bytes == 0) {
      return absl::FailedPreconditionError(absl::StrCat(
          "spilld's segment is not registered with CUDA: ", s.mapping_stats().cuda_skip_reason));
    }
    FillPattern(span.data(), i * bytes, bytes);
    SPILL_RETURN_IF_ERROR(s.WriteBack(o.params[i], 1)->Wait(kWait));
    SPILL_RETURN_IF_ERROR(s.Release(o.params[i])->Wait(kWait));
  }
  SPILL_RETURN_IF_ERROR(s.Flush());
  return Seconds(t0);
}

// Pins every filler at once (the whole max_in_cpu), which evicts every
// parameter from pinned memory, then unpins them.
absl::Status EvictParams(Ours& o) {
  std::vector<std::shared_ptr<Work>> works;
  for (uint64_t id : o.fillers) works.push_back(o.session->Acquire(id));
  for (auto& w : works) SPILL_RETURN_IF_ERROR(w->Wait(kWait));
  works.clear();
  for (uint64_t id : o.fillers) works.push_back(o.session->Release(id));
  for (auto& w : works) SPILL_RETURN_IF_ERROR(w->Wait(kWait));
  return absl::OkStatus();
}

// One timed pass over the parameters; returns its seconds.
absl::StatusOr<double> OursPass(Ours& o, Destination& dest, uint32_t depth, uint64_t bytes) {
  Session& s = *o.session;
  const uint64_t n = o.params.size();
  SPILL_RETURN_IF_ERROR(s.SetAccessOrder(o.params)->Wait(kWait));
  std::vector<std::shared_ptr<Work>> prefetches(n);
  auto prefetch = [&](uint64_t j) {
    if (j < n) prefetches[j] = s.Prefetch(o.params[j]);
  };
  // Acquired objects whose copy may be in flight, oldest first.
  std::deque<uint64_t> held;
  auto release_oldest = [&]() -> absl::Status {
    SPILL_RETURN_IF_ERROR(dest.WaitCopied(held.front()));
    // Waited for, so that spilld counts the buffer free before the next
    // Prefetch asks for one.
    SPILL_RETURN_IF_ERROR(s.Release(o.params[held.front()])->Wait(kWait));
    held.pop_front();
    return absl::OkStatus();
  };
  const auto t0 = std::chrono::steady_clock::now();
  for (uint64_t j = 0; j < depth; ++j) prefetch(j);
  for (uint64_t i = 0; i < n; ++i) {
    prefetch(i + depth);
    SPILL_ASSIGN_OR_RETURN(client::ObjectInfo obj, s.Acquire(o.params[i])->Get(kWait));
    SPILL_ASSIGN_OR_RETURN(absl::Span<uint8_t> span, s.Bytes(obj));
    SPILL_RETURN_IF_ERROR(dest.Copy(i, span.data(), bytes));
    held.push_back(i);
    while (held.size() >= dest.in_flight()) SPILL_RETURN_IF_ERROR(release_oldest());
  }
  while (!held.empty()) SPILL_RETURN_IF_ERROR(release_oldest());
  const double seconds = Seconds(t0);
  for (uint64_t j = 0; j < n; ++j) {
    if (prefetches[j] == nullptr) continue;
    absl::Status p = prefetches[j]->Wait(kWait);
    if (!p.ok()) return absl::Status(p.code(), absl::StrCat("prefetch ", j, ": ", p.message()));
  }
  return seconds;
}

// Runs one timed pass of ours (evict, pass, check that every object came
// from NVMe) and returns its GB/s.
absl::StatusOr<double> TimedOurs(Ours& o, Destination& dest, const Flags& f, uint64_t bytes,
                                 std::vector<double>* reads) {
  const uint64_t n = o.params.size();
  SPILL_RETURN_IF_ERROR(EvictParams(o));
  const double reads0 = testing::MetricValue(*o.daemon, "spill_tiering_reads_total");
  dest.ClearSamples(n);
  SPILL_ASSIGN_OR_RETURN(double seconds, OursPass(o, dest, f.depth, bytes));
  const double read = testing::MetricValue(*o.daemon, "spill_tiering_reads_total") - reads0;
  if (reads0 < 0 || read < static_cast<double>(n)) {
    return absl::InternalError(absl::StrCat("spilld read ", read, " of the ", n,
                                            " objects from NVMe; the rest came from its cache"));
  }
  reads->push_back(read);
  SPILL_RETURN_IF_ERROR(dest.Verify("spilld", n, bytes));
  return n * bytes / seconds / 1e9;
}

absl::StatusOr<double> TimedBaseline(const std::string& path, Destination& dest, uint64_t n,
                                     uint64_t bytes) {
  dest.ClearSamples(n);
  SPILL_ASSIGN_OR_RETURN(double seconds, BaselinePass(path, dest, n, bytes));
  SPILL_RETURN_IF_ERROR(dest.Verify("baseline", n, bytes));
  return n * bytes / seconds / 1e9;
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t m = v.size() / 2;
  return v.size() % 2 == 1 ? v[m] : (v[m - 1] + v[m]) / 2;
}

// Both paths for one object size, ours and the baseline alternating first;
// emits the JSON line.
absl::Status RunSize(const Flags& f, const std::string& run_dir, Destination& dest, uint64_t bytes,
                     const std::string& machine) {
  const uint64_t n = f.total / bytes;
  const std::string file = run_dir + "/baseline.data";
  const std::string nvme_dir = run_dir + "/nvme";
  std::filesystem::create_directories(nvme_dir);
  SPILL_ASSIGN_OR_RETURN(Ours o, StartOurs(f, nvme_dir, n, bytes));
  SPILL_ASSIGN_OR_RETURN(double fill_seconds, FillOurs(o, f.gpu, bytes));
  // Written second: should a disk (or a virtual disk's host) serve recently
  // written data faster, the baseline gets that advantage, not ours.
  SPILL_RETURN_IF_ERROR(WriteBaselineFile(file, dest, n, bytes));
  std::vector<double> ours, base, reads;
  for (int r = 0; r < f.repeat; ++r) {
    for (int turn = 0; turn < 2; ++turn) {
      if ((turn == 0) == (r % 2 == 0)) {
        SPILL_ASSIGN_OR_RETURN(double gbps, TimedOurs(o, dest, f, bytes, &reads));
        ours.push_back(gbps);
      } else {
        SPILL_ASSIGN_OR_RETURN(double gbps, TimedBaseline(file, dest, n, bytes));
        base.push_back(gbps);
      }
    }
  }
  SPILL_RETURN_IF_ERROR(o.session->Close());
  if (const int rc = o.daemon->Stop(); rc != 0) {
    return absl::InternalError(absl::StrCat("spilld exited ", rc, ": ", o.daemon->output()));
  }
  std::filesystem::remove_all(nvme_dir);
  std::filesystem::remove(file);
  Result res;
  res.bench = "nvme_gpu_prefetch";
  res.metric = "bandwidth";
  res.value = Median(ours);
  res.unit = "GB/s";
  res.baseline = f.gpu ? "odirect_cudamemcpy" : "odirect";
  res.baseline_value = Median(base);
  res.extra = {{"object_bytes", bytes},
               {"objects", n},
               {"prefetch_depth", f.depth},
               {"gpu", f.gpu},
               {"buffer_count", o.buffer_count},
               {"max_in_cpu", o.buffer_count * bytes},
               {"runs", f.repeat},
               {"ours_runs_gbps", ours},
               {"baseline_runs_gbps", base},
               {"nvme_reads_per_pass", reads},
               {"fill_write_gbps", n * bytes / fill_seconds / 1e9},
               {"verified_samples_per_pass", n * kSamples},
               {"dir", f.dir}};
  Emit(res, machine);
  return absl::OkStatus();
}

// --dir (made if missing, removed again if so) and a run directory in it.
class Scratch {
 public:
  static absl::StatusOr<std::unique_ptr<Scratch>> Make(const std::string& base) {
    std::unique_ptr<Scratch> s(new Scratch);
    std::error_code ec;
    s->base_ = base;
    s->made_base_ = std::filesystem::create_directories(base, ec);
    if (ec) return absl::InternalError(absl::StrCat("cannot make ", base, ": ", ec.message()));
    std::string tmpl = base + "/run-XXXXXX";
    if (::mkdtemp(tmpl.data()) == nullptr) return absl::ErrnoToStatus(errno, "mkdtemp " + tmpl);
    s->run_ = tmpl;
    const std::string probe = tmpl + "/probe";
    const int fd = ::open(probe.c_str(), O_CREAT | O_RDWR | O_DIRECT | O_CLOEXEC, 0600);
    if (fd < 0) {
      return absl::FailedPreconditionError(absl::StrCat(
          base, " has no O_DIRECT (", std::strerror(errno), "); pass --dir= on a disk"));
    }
    ::close(fd);
    ::unlink(probe.c_str());
    return s;
  }
  ~Scratch() {
    std::error_code ec;
    if (!run_.empty()) std::filesystem::remove_all(run_, ec);
    if (made_base_) std::filesystem::remove(base_, ec);  // only when empty
  }
  const std::string& run_dir() const { return run_; }

 private:
  Scratch() = default;
  std::string base_, run_;
  bool made_base_ = false;
};

std::string MachineFor(const Flags& f) {
  if (!f.machine.empty()) return f.machine;
  const char* env = std::getenv("SPILL_BENCH_MACHINE");
  if (env != nullptr && *env) return env;
  cudaDeviceProp prop{};
  if (f.gpu && cudaGetDeviceProperties(&prop, 0) == cudaSuccess) {
    return std::string(prop.name) + " / " + MachineName();
  }
  return MachineName();
}

absl::Status Run(const Flags& f) {
  SPILL_ASSIGN_OR_RETURN(std::unique_ptr<Scratch> scratch, Scratch::Make(f.dir));
  const uint64_t max_bytes = *std::max_element(f.sizes.begin(), f.sizes.end());
  const uint64_t max_objects = f.total / *std::min_element(f.sizes.begin(), f.sizes.end());
  SPILL_ASSIGN_OR_RETURN(std::unique_ptr<Destination> dest,
                         Destination::Create(f.gpu, max_bytes, max_objects));
  const std::string machine = MachineFor(f);
  for (uint64_t bytes : f.sizes) {
    SPILL_RETURN_IF_ERROR(RunSize(f, scratch->run_dir(), *dest, bytes, machine));
  }
  return absl::OkStatus();
}

constexpr char kUsage[] =
    "usage: nvme_gpu [--dir=DIR] [--sizes=16MiB,64MiB,256MiB] [--total=2GiB]\n"
    "                [--prefetch-depth=3] [--repeat=1] [--no-gpu] [--machine=NAME]\n"
    "                [--spilld-flag=FLAG]...\n";

bool ParseFlags(int argc, char** argv, Flags* f) {
  std::string sizes, total;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto val = [&](const char* name) { return spill::bench::FlagValue(argv[i], name); };
    if (const char* v = val("dir")) {
      f->dir = v;
    } else if (const char* v = val("sizes")) {
      sizes = v;
    } else if (const char* v = val("total")) {
      total = v;
    } else if (const char* v = val("prefetch-depth")) {
      f->depth = static_cast<uint32_t>(std::strtoul(v, nullptr, 10));
    } else if (const char* v = val("repeat")) {
      f->repeat = std::max(1, std::atoi(v));
    } else if (const char* v = val("machine")) {
      f->machine = v;
    } else if (const char* v = val("spilld-flag")) {
      f->spilld_flags.push_back(v);
    } else if (a == "--no-gpu") {
      f->gpu = false;
    } else {
      return false;
    }
  }
  if (!total.empty()) f->total = ParseSize(total).value_or(0);
  if (!sizes.empty()) {
    f->sizes.clear();
    for (absl::string_view s : absl::StrSplit(sizes, ',')) {
      f->sizes.push_back(ParseSize(s).value_or(0));
    }
  }
  for (uint64_t s : f->sizes) {
    if (s == 0 || s % 4096 != 0 || s > f->total) {
      std::fprintf(stderr, "nvme_gpu: sizes must be multiples of 4 KiB, at most --total\n");
      return false;
    }
  }
  return f->depth <= 64 && !f->dir.empty();
}

}  // namespace
}  // namespace spill::bench

int main(int argc, char** argv) {
  using namespace spill::bench;
  Flags f;
  if (!ParseFlags(argc, argv, &f)) {
    std::fprintf(stderr, "%s", kUsage);
    return 2;
  }
  int devices = 0;
  if (f.gpu && (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0)) {
    std::fprintf(stderr,
                 "nvme_gpu: no CUDA device; this benchmark runs on a GPU machine "
                 "(--no-gpu measures the NVMe -> pinned part only)\n");
    return 77;
  }
  const absl::Status s = Run(f);
  if (!s.ok()) {
    std::fprintf(stderr, "nvme_gpu: %s\n", s.ToString().c_str());
    return 1;
  }
  return 0;
}
