// A fixed pool of compute threads shared by every job of a node, with a
// per-call thread limit so that one job's optimizer step cannot take every
// core.
//
//   Executor exec(/*workers=*/15);
//   SPILL_RETURN_IF_ERROR(exec.ParallelFor(n, 4096, /*max_threads=*/8,
//       [&](uint64_t begin, uint64_t end) { Update(begin, end); }));
//
// Scheduling. A ParallelFor call splits [0, n) into contiguous chunks (each a
// multiple of kAlign elements except the last; at least `grain` elements;
// about four chunks per thread it may use) and publishes them as one job. The
// calling thread always works on its own job, so a job makes progress even
// when every worker is busy elsewhere. A worker that becomes free takes one
// chunk from the job that currently has the fewest workers on it (oldest job
// first on ties) among jobs that still have unclaimed chunks and fewer than
// max_threads - 1 workers; after each chunk it chooses again. So concurrent
// jobs share the workers about evenly at chunk granularity, and a job never
// has more than max_threads threads (its caller included) running its chunks.
#ifndef SPILL_SERVER_OPTIM_EXECUTOR_H_
#define SPILL_SERVER_OPTIM_EXECUTOR_H_

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <list>
#include <mutex>
#include <thread>
#include <vector>

#include "absl/status/status.h"

namespace spill::optim {

// Sets the calling thread's nice value to `nice` (0..19; Linux applies
// setpriority(PRIO_PROCESS, tid) to one thread). Raising one's own nice value
// needs no privilege. InvalidArgument outside 0..19; the errno of a failed
// setpriority otherwise. nice 0 changes nothing.
absl::Status LowerThreadPriority(int nice);

class Executor {
 public:
  // Chunk boundaries are multiples of kAlign elements: 64 elements are a
  // whole number of 64-byte cache lines for 1-, 2- and 4-byte element types
  // (and of vectors up to 512 bits), so two threads never write the same
  // cache line of an array that starts on a cache line.
  static constexpr uint64_t kAlign = 64;

  // Starts `workers` threads (0 is allowed: every call then runs on its
  // caller alone). With nice > 0 each worker lowers its own scheduling
  // priority to that nice value (see LowerThreadPriority), so that threads
  // answering requests preempt bulk optimizer work.
  explicit Executor(uint32_t workers, int nice = 0);
  // Joins the workers. No ParallelFor call may be in progress.
  ~Executor();
  Executor(const Executor&) = delete;
  Executor& operator=(const Executor&) = delete;

  uint32_t workers() const { return static_cast<uint32_t>(threads_.size()); }

  // Calls fn(begin, end) over disjoint contiguous ranges covering [0, n)
  // exactly once each, on the calling thread and at most max_threads - 1
  // workers at a time (max_threads == 0: no limit beyond the pool), and
  // returns when every call has returned. grain is the smallest chunk worth
  // handing to another thread (0 = kAlign). fn must not throw; it may run
  // concurrently with itself on different ranges.
  // Returns OK (n == 0 calls nothing), or InvalidArgument if fn is empty.
  // Thread-safe: any number of threads may call ParallelFor concurrently.
  absl::Status ParallelFor(uint64_t n, uint64_t grain, uint32_t max_threads,
                           const std::function<void(uint64_t, uint64_t)>& fn);

 private:
  struct Job {
    const std::function<void(uint64_t, uint64_t)>* fn;
    uint64_t n, chunk, num_chunks;
    uint32_t helper_limit;   // workers allowed on this job at once
    uint64_t next = 0;       // next unclaimed chunk
    uint64_t finished = 0;   // chunks whose fn returned
    uint32_t helpers = 0;    // workers running a chunk of this job now
  };

  void WorkerLoop();
  // Under mu_: the job a free worker should help, or jobs_.end().
  std::list<Job*>::iterator PickJobLocked();
  // Runs chunk c of job (mu_ not held).
  static void RunChunk(const Job& job, uint64_t c);

  std::mutex mu_;
  std::condition_variable work_cv_;  // a job was published, or stopping
  std::condition_variable done_cv_;  // a chunk finished
  std::list<Job*> jobs_;             // jobs with unclaimed chunks, oldest first
  bool stopping_ = false;
  std::vector<std::thread> threads_;
};

}  // namespace spill::optim

#endif  // SPILL_SERVER_OPTIM_EXECUTOR_H_
