// pinned_populate: how fast spilld's pinned tier comes up (and goes away).
//
// PinnedArena::Create of --bytes in --segment-bytes segments on
// --threads threads (spilld's start-up: every page faulted in, zeroed and
// locked), against the same work done the plain way in the same run: each
// segment a memfd mapped with MAP_POPULATE, then mlock'ed, on as many
// threads. Both are released (munmap of locked memory) and timed too.
//
//   pinned_populate [--bytes=8GiB] [--segment-bytes=1GiB] [--threads=N] [--repeat=2]
//
// Needs the memory and the memlock limit for --bytes (run as root or with
// `ulimit -l unlimited`).
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "bench/bench_json.h"
#include "common/memfd.h"
#include "common/units.h"
#include "storage/pinned_arena.h"

namespace {

using Clock = std::chrono::steady_clock;
using spill::bench::Emit;
using spill::bench::FlagValue;
using spill::bench::Result;

double SecondsSince(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

struct Times {
  double create_s = 0;
  double release_s = 0;
};

// The plain sequence: memfd, mmap(MAP_POPULATE), mlock, per segment.
bool PlainPopulate(uint64_t segment, uint64_t count, uint32_t threads, Times& t) {
  std::vector<spill::UniqueFd> fds(count);
  std::vector<spill::Mapping> maps(count);
  std::atomic<uint64_t> next{0};
  std::atomic<bool> failed{false};
  const Clock::time_point t0 = Clock::now();
  auto work = [&] {
    for (uint64_t i = next++; i < count && !failed; i = next++) {
      spill::MemfdOptions options;
      options.name = "populate-bench";
      options.size_bytes = segment;
      absl::StatusOr<spill::UniqueFd> fd = spill::CreateSealedMemfd(options);
      absl::StatusOr<spill::Mapping> map =
          fd.ok() ? spill::Mapping::Map(fd->get(), segment, /*populate=*/true)
                  : absl::StatusOr<spill::Mapping>(fd.status());
      if (!map.ok() || ::mlock(map->data(), segment) != 0) {
        std::fprintf(stderr, "pinned_populate: plain segment %llu: %s\n",
                     static_cast<unsigned long long>(i),
                     map.ok() ? "mlock failed" : map.status().ToString().c_str());
        failed = true;
        return;
      }
      fds[i] = *std::move(fd);
      maps[i] = *std::move(map);
    }
  };
  std::vector<std::thread> workers;
  for (uint32_t k = 1; k < std::min<uint64_t>(threads, count); ++k) workers.emplace_back(work);
  work();
  for (std::thread& w : workers) w.join();
  t.create_s = SecondsSince(t0);
  const Clock::time_point t1 = Clock::now();
  maps.clear();
  fds.clear();
  t.release_s = SecondsSince(t1);
  return !failed;
}

bool ArenaPopulate(uint64_t bytes, uint64_t segment, uint32_t threads, Times& t) {
  spill::storage::ArenaOptions options;
  options.total_bytes = bytes;
  options.segment_bytes = segment;
  options.populate_threads = threads;
  options.huge_pages = spill::storage::HugePageMode::kOff;  // As the plain sequence.
  const Clock::time_point t0 = Clock::now();
  absl::StatusOr<std::unique_ptr<spill::storage::PinnedArena>> arena =
      spill::storage::PinnedArena::Create(options);
  t.create_s = SecondsSince(t0);
  if (!arena.ok()) {
    std::fprintf(stderr, "pinned_populate: %s\n", arena.status().ToString().c_str());
    return false;
  }
  const Clock::time_point t1 = Clock::now();
  arena->reset();
  t.release_s = SecondsSince(t1);
  return true;
}

bool ParseSize(const char* v, uint64_t& out) {
  absl::StatusOr<uint64_t> size = spill::ParseSize(v);
  if (!size.ok()) return false;
  out = *size;
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  uint64_t bytes = 8ull << 30, segment = 1ull << 30;
  uint32_t threads = std::clamp(std::thread::hardware_concurrency() / 2, 1u, 16u);
  int repeat = 2;
  for (int i = 1; i < argc; ++i) {
    const char* v = nullptr;
    bool ok = true;
    if ((v = FlagValue(argv[i], "bytes"))) ok = ParseSize(v, bytes);
    else if ((v = FlagValue(argv[i], "segment-bytes"))) ok = ParseSize(v, segment);
    else if ((v = FlagValue(argv[i], "threads"))) ok = (threads = std::atoi(v)) > 0;
    else if ((v = FlagValue(argv[i], "repeat"))) ok = (repeat = std::atoi(v)) > 0;
    else ok = false;
    if (!ok || segment == 0 || bytes < segment) {
      std::fprintf(stderr,
                   "pinned_populate: bad flag '%s'\nusage: pinned_populate [--bytes=SIZE] "
                   "[--segment-bytes=SIZE <= bytes] [--threads=N>0] [--repeat=N>0]\n",
                   argv[i]);
      return 2;
    }
  }
  const uint64_t count = bytes / segment;
  bytes = count * segment;
  Times best_arena{1e30, 1e30}, best_plain{1e30, 1e30};
  for (int r = 0; r < repeat; ++r) {
    Times a, p;
    if (!ArenaPopulate(bytes, segment, threads, a)) return 1;
    if (!PlainPopulate(segment, count, threads, p)) return 1;
    best_arena = {std::min(best_arena.create_s, a.create_s),
                  std::min(best_arena.release_s, a.release_s)};
    best_plain = {std::min(best_plain.create_s, p.create_s),
                  std::min(best_plain.release_s, p.release_s)};
  }
  const std::string machine = spill::bench::MachineName();
  const double gb = static_cast<double>(bytes) / 1e9;
  nlohmann::json extra = {{"bytes", bytes}, {"segment_bytes", segment}, {"threads", threads}};
  Emit({"pinned_populate", "create_gb_per_s", gb / best_arena.create_s, "GB/s",
        "memfd_mmap_populate_then_mlock", gb / best_plain.create_s, extra},
       machine);
  Emit({"pinned_populate", "release_gb_per_s", gb / best_arena.release_s, "GB/s",
        "memfd_mmap_populate_then_mlock", gb / best_plain.release_s, extra},
       machine);
  return 0;
}
