// A fixed pool of threads running posted closures in FIFO order. gRPC
// handlers post their work here so that no reactor thread ever blocks.
#ifndef SPILL_SERVER_THREAD_POOL_H_
#define SPILL_SERVER_THREAD_POOL_H_

#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace spill::server {

class ThreadPool {
 public:
  // With nice > 0 each thread first lowers its own priority to that nice
  // value (best effort; see optim::LowerThreadPriority).
  explicit ThreadPool(int threads, int nice = 0);
  // Runs every closure already posted, then joins the threads.
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  // Queues fn. Returns false (and drops fn) once the pool is shutting down.
  bool Post(std::function<void()> fn);

 private:
  void Run();

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> queue_;
  bool stopping_ = false;
  std::vector<std::thread> threads_;
};

}  // namespace spill::server

#endif  // SPILL_SERVER_THREAD_POOL_H_
