// WorkDriver: what makes a session's stream progress while a thread waits.
//
// The thread that waits on a Work drives the stream's completion queue
// itself when no other thread does (see StreamDriver), so an answer wakes
// the thread that wants it directly. A Work keeps a weak reference to its
// session's driver; without one (a Work failed before it was sent, or whose
// session is gone) it waits on its own condition variable.
#ifndef SPILL_CLIENT_WORK_DRIVER_H_
#define SPILL_CLIENT_WORK_DRIVER_H_

#include <chrono>
#include <functional>

namespace spill::client::internal {

class WorkDriver {
 public:
  virtual ~WorkDriver() = default;

  // Makes the stream progress until done() is true or deadline passes, and
  // returns done(). Returns early, with done() false, when the stream has
  // ended and nothing more can arrive (the caller then waits for whoever
  // completes its Work). done() is called with the driver's lock held: it
  // may take only locks that never call into the driver.
  virtual bool WaitUntil(const std::function<bool()>& done,
                         std::chrono::steady_clock::time_point deadline) = 0;

  // Handles what has already arrived, without blocking, unless another
  // thread is driving.
  virtual void Poll() = 0;
};

}  // namespace spill::client::internal

#endif  // SPILL_CLIENT_WORK_DRIVER_H_
