#include "server/optim/executor.h"

#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>

#include "absl/strings/str_cat.h"

namespace spill::optim {

absl::Status LowerThreadPriority(int nice) {
  if (nice < 0 || nice > 19) {
    return absl::InvalidArgumentError(absl::StrCat("nice must be in 0..19, got ", nice));
  }
  if (nice == 0) return absl::OkStatus();
  const auto tid = static_cast<id_t>(syscall(SYS_gettid));
  if (setpriority(PRIO_PROCESS, tid, nice) != 0) {
    return absl::ErrnoToStatus(errno, absl::StrCat("setpriority(nice ", nice, ")"));
  }
  return absl::OkStatus();
}

Executor::Executor(uint32_t workers, int nice) {
  threads_.reserve(workers);
  for (uint32_t i = 0; i < workers; ++i) {
    threads_.emplace_back([this, nice] {
      // Best effort: a worker at the default priority still computes right.
      LowerThreadPriority(nice).IgnoreError();
      WorkerLoop();
    });
  }
}

Executor::~Executor() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  work_cv_.notify_all();
  for (auto& t : threads_) t.join();
}

void Executor::RunChunk(const Job& job, uint64_t c) {
  const uint64_t begin = c * job.chunk;
  (*job.fn)(begin, std::min(job.n, begin + job.chunk));
}

std::list<Executor::Job*>::iterator Executor::PickJobLocked() {
  auto best = jobs_.end();
  for (auto it = jobs_.begin(); it != jobs_.end(); ++it) {
    Job* j = *it;
    if (j->next >= j->num_chunks || j->helpers >= j->helper_limit) continue;
    if (best == jobs_.end() || j->helpers < (*best)->helpers) best = it;
  }
  return best;
}

void Executor::WorkerLoop() {
  std::unique_lock<std::mutex> lock(mu_);
  while (true) {
    auto it = PickJobLocked();
    if (it == jobs_.end()) {
      if (stopping_) return;
      work_cv_.wait(lock);
      continue;
    }
    Job* job = *it;
    const uint64_t c = job->next++;
    if (job->next == job->num_chunks) jobs_.erase(it);
    ++job->helpers;
    lock.unlock();
    RunChunk(*job, c);
    lock.lock();
    --job->helpers;
    ++job->finished;
    // The caller may be waiting for this chunk; other workers may now be
    // allowed on the job again (helpers dropped below the limit).
    done_cv_.notify_all();
    if (job->next < job->num_chunks) work_cv_.notify_one();
  }
}

absl::Status Executor::ParallelFor(uint64_t n, uint64_t grain, uint32_t max_threads,
                                   const std::function<void(uint64_t, uint64_t)>& fn) {
  if (!fn) return absl::InvalidArgumentError("ParallelFor: fn is empty");
  if (n == 0) return absl::OkStatus();
  const uint64_t pool = threads_.size();
  const uint64_t helpers = max_threads == 0 ? pool : std::min<uint64_t>(pool, max_threads - 1);
  const uint64_t threads = helpers + 1;
  if (grain == 0) grain = kAlign;
  uint64_t chunk = std::max<uint64_t>(grain, (n + threads * 4 - 1) / (threads * 4));
  chunk = (chunk + kAlign - 1) / kAlign * kAlign;
  Job job{&fn, n, chunk, (n + chunk - 1) / chunk, static_cast<uint32_t>(helpers)};

  std::unique_lock<std::mutex> lock(mu_);
  if (job.num_chunks > 1 && helpers > 0) {
    jobs_.push_back(&job);
    const uint64_t wake = std::min<uint64_t>(helpers, job.num_chunks - 1);
    if (wake >= pool) {
      work_cv_.notify_all();
    } else {
      for (uint64_t i = 0; i < wake; ++i) work_cv_.notify_one();
    }
  }
  while (job.next < job.num_chunks) {
    const uint64_t c = job.next++;
    if (job.next == job.num_chunks && job.num_chunks > 1 && helpers > 0) jobs_.remove(&job);
    lock.unlock();
    RunChunk(job, c);
    lock.lock();
    ++job.finished;
  }
  done_cv_.wait(lock, [&] { return job.finished == job.num_chunks; });
  return absl::OkStatus();
}

}  // namespace spill::optim
