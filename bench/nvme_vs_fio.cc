// NVMe tier bandwidth against fio (io_uring engine, O_DIRECT) on the same
// file, the same bytes, block size and queue depth, in the same run.
//
//   nvme_vs_fio --dir=/mnt/nvme0/spill-bench --size=1073741824 --cells=quick
//
// Cells: sequential and random read and write, and a mixed cell (half the
// bytes written while the other half is read, the optimizer's pattern), over
// block sizes 128 KiB..8 MiB and queue depths 1..64. Ours: one NvmeTier ring
// (thread_count 1) with fixed buffers and files, CRC32C computed on every
// write and checked on every read. fio: --ioengine=io_uring --direct=1 with
// --fixedbufs and --registerfiles (like ours), one job, the same byte range
// of the tier's data file. One JSON line per cell; ratio = ours / fio, the
// medians of --repeat runs each, ours and fio alternating. A shared or
// virtual disk drifts within a cell (a run's bandwidth moves by a third from
// one second to the next), so each line also has paired_ratio: the median
// over the runs of ours / the fio run next to it in time.
#include <fcntl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <future>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "bench/bench_json.h"
#include "storage/crc32c.h"
#include "storage/nvme_tier.h"

namespace spill::bench {
namespace {

using storage::NvmeExtent;
using storage::NvmeOptions;
using storage::NvmeTier;

struct Flags {
  std::string dir = "/var/tmp/spill-nvme-bench";
  uint64_t size = uint64_t{256} << 20;
  std::string cells = "quick";
  std::string fio = "fio";
  std::string filter;  // only cells whose metric name contains it
  int repeat = 1;        // runs per cell (ours and fio alternating); medians reported
  uint32_t threads = 1;  // our thread_count (rings); fio always runs one job
  bool fixed = true;     // register the buffer with the tier (READ_FIXED/WRITE_FIXED)
  int settle_ms = 0;     // pause after each untimed rewrite, before the timed run
};

struct Cell {
  std::string pattern;  // seq_write seq_read rand_write rand_read mixed
  uint32_t block_size;
  uint32_t queue_depth;
};

double CpuSeconds() {
  rusage u{};
  ::getrusage(RUSAGE_SELF, &u);
  return u.ru_utime.tv_sec + u.ru_utime.tv_usec / 1e6 + u.ru_stime.tv_sec + u.ru_stime.tv_usec / 1e6;
}

double Seconds(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// `text` quoted as one word of a shell command line.
std::string ShellQuoted(const std::string& text) {
  std::string out = "'";
  for (char c : text) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

// Runs a shell command, collects its stdout into *out, and returns its exit
// status (-1 when it could not be started or did not exit normally).
int RunCapture(const std::string& cmd, std::string* out) {
  FILE* p = ::popen(cmd.c_str(), "r");
  if (p == nullptr) return -1;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), p)) > 0) out->append(buf, n);
  const int status = ::pclose(p);
  return status != -1 && WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

// Runs fio as a child and returns its bandwidth in bytes/s (read + write);
// 0, with the reason on stderr, when it fails.
double RunFio(const Flags& f, const std::string& file, const Cell& c, double* cpu_share) {
  const std::map<std::string, std::string> rw = {{"seq_write", "write"},
                                                 {"seq_read", "read"},
                                                 {"rand_write", "randwrite"},
                                                 {"rand_read", "randread"},
                                                 {"mixed", "rw"}};
  std::string cmd = ShellQuoted(f.fio) + " --name=cell --filename=" + ShellQuoted(file) +
                    " --size=" + std::to_string(f.size) +
                    " --offset=0 --bs=" + std::to_string(c.block_size) +
                    " --iodepth=" + std::to_string(c.queue_depth) + " --rw=" + rw.at(c.pattern) +
                    " --ioengine=io_uring --direct=1 --fixedbufs=1 --registerfiles=1" +
                    " --randrepeat=0 --output-format=json 2>/dev/null";
  if (c.pattern == "mixed") cmd += " --rwmixread=50";
  std::string out;
  const int rc = RunCapture(cmd, &out);
  if (rc != 0) {
    std::fprintf(stderr, "nvme_vs_fio: fio failed (exit status %d): %s\n", rc, cmd.c_str());
    return 0;
  }
  const size_t brace = out.find('{');
  const auto j = brace == std::string::npos
                     ? nlohmann::json()
                     : nlohmann::json::parse(out.substr(brace), nullptr, false);
  if (!j.is_object() || !j.contains("jobs") || !j["jobs"].is_array() || j["jobs"].empty()) {
    std::fprintf(stderr, "nvme_vs_fio: fio printed no JSON report: %s\n", cmd.c_str());
    return 0;
  }
  const auto& job = j["jobs"][0];
  *cpu_share = (job["usr_cpu"].get<double>() + job["sys_cpu"].get<double>()) / 100;
  return job["read"]["bw_bytes"].get<double>() + job["write"]["bw_bytes"].get<double>();
}

// Runs a batch of Writes/Reads at once (the ring keeps queue_depth in
// flight) and waits for all of them. Returns false on any error.
struct Io {
  bool write;
  NvmeExtent extent;
  uint8_t* mem;
  uint64_t bytes;
  std::vector<uint32_t>* crcs;
};

bool RunBatch(NvmeTier& tier, std::vector<Io>& ios) {
  std::vector<std::promise<absl::Status>> done(ios.size());
  for (size_t i = 0; i < ios.size(); ++i) {
    auto cb = [&done, i](absl::Status s) { done[i].set_value(std::move(s)); };
    if (ios[i].write) {
      tier.Write(ios[i].extent, ios[i].mem, ios[i].bytes, ios[i].crcs, cb);
    } else {
      tier.Read(ios[i].extent, *ios[i].crcs, ios[i].mem, ios[i].bytes, "bench", cb);
    }
  }
  bool ok = true;
  for (auto& d : done) {
    absl::Status s = d.get_future().get();
    if (!s.ok()) {
      std::fprintf(stderr, "nvme_vs_fio: %s\n", s.ToString().c_str());
      ok = false;
    }
  }
  return ok;
}

struct CellRuns {
  std::vector<double> ours, fio, ours_cpu, fio_cpu;  // bytes/s and CPU share
  bool fixed = false;
};

// Runs one cell repeat times, ours and fio in alternating order, on one
// open tier.
// Read and mixed cells write the whole range again (untimed) before each
// timed run, ours and fio alike, so each reads freshly written blocks under
// the same conditions and ours has their CRCs; every cell syncs before each
// timed run (do_prime). A failed run counts 0.
CellRuns RunCell(const Flags& f, const Cell& c, uint8_t* mem, const std::string& file) {
  CellRuns out;
  NvmeOptions o;
  o.dirs = {f.dir};
  o.capacity_bytes = f.size;
  o.block_size = c.block_size;
  o.queue_depth = c.queue_depth;
  o.thread_count = f.threads;
  auto tier_or = NvmeTier::Open(o);
  if (!tier_or.ok()) {
    std::fprintf(stderr, "nvme_vs_fio: %s\n", tier_or.status().ToString().c_str());
    return out;
  }
  NvmeTier& tier = **tier_or;
  out.fixed = f.fixed && tier.RegisterMemory(1, mem, f.size).ok();
  const bool random = c.pattern.rfind("rand", 0) == 0;
  // Sequential cells move one object of size bytes; random and mixed ones
  // one object per block (mixed: writes and reads alternate, in order).
  const uint64_t unit = random || c.pattern == "mixed" ? c.block_size : f.size;
  const uint64_t count = f.size / unit;
  std::vector<std::vector<uint32_t>> crcs(count);
  std::vector<Io> prime, timed;
  for (uint64_t i = 0; i < count; ++i) {
    auto e = tier.Allocate("bench", unit);
    if (!e.ok()) return out;
    prime.push_back({true, *e, mem + i * unit, unit, &crcs[i]});
  }
  timed = prime;
  const bool write = c.pattern.find("write") != std::string::npos;
  for (uint64_t i = 0; i < count; ++i) {
    timed[i].write = c.pattern == "mixed" ? i % 2 == 0 : write;
  }
  if (random) std::shuffle(timed.begin(), timed.end(), std::mt19937(7));
  const bool needs_prime = !write;
  const int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
  // Before every timed run, ours and fio's alike: read cells rewrite the
  // range (untimed); every cell then flushes the device's write cache
  // (syncfs: the previous run's writes, ours or fio's, are on the medium, not
  // in the virtio host's cache) and lets the disk settle, so that no run
  // inherits the one before it, and the timed run does not depend on how
  // soon after it starts (fio starts later than ours: it is a new process).
  auto do_prime = [&] {
    const bool ok = !needs_prime || RunBatch(tier, prime);
    if (fd < 0 || ::syncfs(fd) != 0) {
      std::fprintf(stderr, "nvme_vs_fio: cannot sync %s: %s\n", file.c_str(), std::strerror(errno));
      return false;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(f.settle_ms));
    return ok;
  };
  auto run_ours = [&] {
    double cpu = 0, bw = 0;
    if (do_prime()) {
      const double cpu0 = CpuSeconds();
      const auto t0 = std::chrono::steady_clock::now();
      const bool ok = RunBatch(tier, timed);
      const double wall = Seconds(t0);
      cpu = (CpuSeconds() - cpu0) / wall;
      bw = ok ? static_cast<double>(count * unit) / wall : 0;
    }
    out.ours.push_back(bw);
    out.ours_cpu.push_back(cpu);
  };
  auto run_fio = [&] {
    double cpu = 0;
    out.fio.push_back(do_prime() ? RunFio(f, file, c, &cpu) : 0);
    out.fio_cpu.push_back(cpu);
  };
  // Alternate which goes first, so drift of a shared disk hits both alike.
  for (int r = 0; r < f.repeat; ++r) {
    if (r % 2 == 0) {
      run_ours();
      run_fio();
    } else {
      run_fio();
      run_ours();
    }
  }
  ::close(fd);
  return out;
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Median of ours[i] / fio[i] (run i of each, adjacent in time); 0 when a
// fio run has no bandwidth.
double PairedRatio(const std::vector<double>& ours, const std::vector<double>& fio) {
  std::vector<double> ratios;
  for (size_t i = 0; i < ours.size() && i < fio.size(); ++i) {
    if (fio[i] <= 0) return 0;
    ratios.push_back(ours[i] / fio[i]);
  }
  return ratios.empty() ? 0 : Median(ratios);
}

std::vector<Cell> Cells(const std::string& which) {
  std::vector<uint32_t> sizes, depths;
  if (which == "full") {
    sizes = {128 << 10, 256 << 10, 512 << 10, 1 << 20, 2 << 20, 4 << 20, 8 << 20};
    depths = {1, 2, 4, 8, 16, 32, 64};
  } else {
    sizes = {128 << 10, 1 << 20, 8 << 20};
    depths = {1, 8, 32};
  }
  std::vector<Cell> cells;
  for (const char* p : {"seq_write", "seq_read", "rand_write", "rand_read"}) {
    for (uint32_t bs : sizes) {
      for (uint32_t qd : depths) cells.push_back({p, bs, qd});
    }
  }
  for (uint32_t qd : depths) cells.push_back({"mixed", 1 << 20, qd});
  return cells;
}

bool ParseFlags(int argc, char** argv, Flags* f) {
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto val = [&](const char* name) { return spill::bench::FlagValue(argv[i], name); };
    if (const char* v = val("dir")) {
      f->dir = v;
    } else if (const char* v = val("size")) {
      f->size = std::strtoull(v, nullptr, 10);
    } else if (const char* v = val("cells")) {
      f->cells = v;
    } else if (const char* v = val("fio")) {
      f->fio = v;
    } else if (const char* v = val("filter")) {
      f->filter = v;
    } else if (const char* v = val("settle-ms")) {
      f->settle_ms = std::max(0, std::atoi(v));
    } else if (a == "--no-fixed") {
      f->fixed = false;
    } else if (const char* v = val("threads")) {
      f->threads = static_cast<uint32_t>(std::max(1, std::atoi(v)));
    } else if (const char* v = val("repeat")) {
      f->repeat = std::max(1, std::atoi(v));
    } else {
      std::fprintf(stderr,
                   "usage: nvme_vs_fio [--dir=DIR] [--size=BYTES] [--cells=quick|full] "
                   "[--fio=PATH] [--filter=SUBSTR] [--repeat=N] [--threads=N] [--no-fixed] [--settle-ms=MS]\nunknown flag: %s\n",
                   argv[i]);
      return false;
    }
  }
  if (f->size < (16u << 20) || f->size % (16u << 20) != 0 ||
      (f->cells != "quick" && f->cells != "full")) {
    std::fprintf(stderr, "nvme_vs_fio: --size must be a multiple of 16 MiB, --cells quick|full\n");
    return false;
  }
  return true;
}

}  // namespace
}  // namespace spill::bench

int main(int argc, char** argv) {
  using namespace spill::bench;
  Flags f;
  if (!ParseFlags(argc, argv, &f)) return 2;
  // Without a working fio every cell's baseline would be 0: refuse first.
  if (std::string version; RunCapture(ShellQuoted(f.fio) + " --version 2>&1", &version) != 0 ||
                           version.rfind("fio-", 0) != 0) {
    std::fprintf(stderr, "nvme_vs_fio: --fio=%s does not run (%s); install fio, or make the "
                 "bundle with --with-fio\n", f.fio.c_str(),
                 version.empty() ? "no output" : version.substr(0, version.find('\n')).c_str());
    return 2;
  }
  std::filesystem::create_directories(f.dir);
  void* mem = std::aligned_alloc(4096, f.size);
  std::memset(mem, 0x5a, f.size);
  for (uint64_t i = 0; i < f.size; i += 4096) static_cast<uint8_t*>(mem)[i] = uint8_t(i >> 12);
  const std::string machine = MachineName();
  const std::string file = f.dir + "/spill-nvme.data";
  int failures = 0;
  // Write the whole range once, so no cell pays for converting preallocated
  // (unwritten) extents.
  Flags once = f;
  once.repeat = 1;
  if (RunCell(once, {"seq_write", 8 << 20, 32}, static_cast<uint8_t*>(mem), file).ours[0] == 0) {
    return 1;
  }
  {
    // What checksumming costs on this CPU (one thread), for reading the cells.
    const auto t0 = std::chrono::steady_clock::now();
    uint32_t crc = 0;
    for (uint64_t off = 0; off < f.size; off += 1 << 20) {
      crc ^= spill::storage::Crc32c(static_cast<uint8_t*>(mem) + off, 1 << 20);
    }
    Result r;
    r.bench = "nvme_vs_fio";
    r.metric = "crc32c_throughput";
    r.value = f.size / Seconds(t0) / (1 << 20);
    r.unit = "MiB/s";
    r.extra = {{"check", crc}};
    Emit(r, machine);
  }
  for (const Cell& c : Cells(f.cells)) {
    Result r;
    r.bench = "nvme_vs_fio";
    r.metric = c.pattern + "_bs" + std::to_string(c.block_size >> 10) + "k_qd" +
               std::to_string(c.queue_depth) + "_bandwidth";
    if (r.metric.find(f.filter) == std::string::npos) continue;
    const CellRuns runs = RunCell(f, c, static_cast<uint8_t*>(mem), file);
    const std::vector<double>&ours_runs = runs.ours, &fio_runs = runs.fio,
                              &ours_cpu = runs.ours_cpu, &fio_cpu = runs.fio_cpu;
    const bool fixed = runs.fixed;
    const double ours = Median(ours_runs);
    const double fio = Median(fio_runs);
    if (ours == 0 || fio == 0) ++failures;
    r.value = ours / (1 << 20);
    r.unit = "MiB/s";
    r.baseline = "fio io_uring direct fixedbufs registerfiles";
    r.baseline_value = fio / (1 << 20);
    r.extra = {{"pattern", c.pattern},          {"block_size", c.block_size},
               {"queue_depth", c.queue_depth},  {"bytes", f.size},
               {"fixed_buffers", fixed},        {"crc32c", true},
               {"dir", f.dir},                 {"runs", f.repeat},           {"thread_count", f.threads}, {"settle_ms", f.settle_ms},
               {"ours_cpu_share", Median(ours_cpu)}, {"fio_cpu_share", Median(fio_cpu)},
               {"ours_runs_mib_s", ours_runs},      {"fio_runs_mib_s", fio_runs},
               {"paired_ratio", PairedRatio(ours_runs, fio_runs)}};
    for (auto& v : r.extra["ours_runs_mib_s"]) v = v.get<double>() / (1 << 20);
    for (auto& v : r.extra["fio_runs_mib_s"]) v = v.get<double>() / (1 << 20);
    Emit(r, machine);
  }
  std::free(mem);
  return failures == 0 ? 0 : 1;
}
