// StreamDriver: one session's bidirectional stream to spilld, on gRPC's
// asynchronous API, driven by the threads that wait for its answers.
//
// Whoever waits drives: a thread waiting on a Work polls the stream's
// completion queue itself when no other thread does, so the answer it waits
// for wakes it directly, and its next request is written from its own
// thread with no other thread inside the transport. (With a reader thread
// and a synchronous stream, each round trip also paid a hand-off between
// threads: bench/results/2026-11-29-h200-x1-rtt-floors.md.)
//
// A background thread drives when nobody waits but requests are in flight
// (fire-and-forget prefetches, releases, queued writes), and looks for a
// stream ended by spilld every kIdleTick while idle. It gives the role up as
// soon as a thread starts waiting (an alarm wakes it out of the queue).
//
// Requests are written in order, one at a time (gRPC's rule); the rest
// queue. Answers go to on_event; the stream's end, once, to on_end.
//
// Thread-safe. Close() must be called before destruction.
#ifndef SPILL_CLIENT_STREAM_DRIVER_H_
#define SPILL_CLIENT_STREAM_DRIVER_H_

#include <grpcpp/alarm.h>
#include <grpcpp/grpcpp.h>

#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>

#include "client/work_driver.h"
#include "spill/v1/spill.grpc.pb.h"

namespace spill::client::internal {

class StreamDriver final : public WorkDriver {
 public:
  struct Callbacks {
    // An answer, in the order read. Called by the driving thread, without
    // the driver's lock.
    std::function<void(v1::StreamEvent event)> on_event;
    // The stream ended with status (OK when spilld ended it). Called once,
    // after the last on_event.
    std::function<void(const grpc::Status& status)> on_end;
    // Whether requests still wait for answers (the background thread drives
    // while they do). Called with the driver's lock held.
    std::function<bool()> has_pending;
  };

  // How often the background thread looks for a stream ended while idle.
  static constexpr std::chrono::milliseconds kIdleTick{2};

  // Starts the session stream on stub (whose channel must outlive this)
  // and the background thread.
  static std::shared_ptr<StreamDriver> Start(v1::Worker::Stub* stub, Callbacks callbacks);
  ~StreamDriver() override;

  // Queues request to be written after those before it. False once the
  // stream is half-closed, failed or ended: nothing was queued.
  bool Write(v1::StreamRequest request);

  // Half-closes the stream, waits up to grace for spilld to end it, cancels
  // it otherwise, waits for its end, stops the background thread and drains
  // the completion queue. Later calls do nothing.
  void Close(std::chrono::milliseconds grace);

  // Wakes the threads waiting in WaitUntil (and the one driving) to look at
  // their Works again: for Works completed from outside the stream.
  void Interrupt();

  bool WaitUntil(const std::function<bool()>& done,
                 std::chrono::steady_clock::time_point deadline) override;
  void Poll() override;

 private:
  explicit StreamDriver(Callbacks callbacks);

  // Drives until done() (true) or deadline or the stream's end (false);
  // requires the role, which it keeps throughout.
  bool DriveUntil(const std::function<bool()>& done,
                  std::chrono::steady_clock::time_point deadline);
  // Takes one event from the queue (waiting until deadline) and handles it;
  // false when none came.
  bool DriveOnce(gpr_timespec deadline);
  void Handle(void* tag, bool ok);
  void OnWriteDone(bool ok);
  // Gives the driving role up. Requires mu_.
  void ReleaseRole();
  // Makes the thread in the queue leave it. Requires mu_.
  void WakeDriver();
  void BackgroundLoop();
  // Something is in flight that an event will answer. Requires mu_.
  bool Outstanding() const;

  const Callbacks callbacks_;
  grpc::ClientContext context_;
  grpc::CompletionQueue cq_;
  std::unique_ptr<grpc::ClientAsyncReaderWriter<v1::StreamRequest, v1::StreamEvent>> stream_;
  grpc::Alarm wake_;
  // Tags: the address of each names the operation.
  char tag_read_ = 0, tag_write_ = 0, tag_writes_done_ = 0, tag_finish_ = 0,
       tag_wake_ = 0;
  // Touched only by the driving thread.
  v1::StreamEvent event_;
  grpc::Status finish_status_;

  std::mutex mu_;
  std::condition_variable role_cv_;        // the role is free, or the stream ended
  std::condition_variable background_cv_;  // work for the background thread
  bool driving_ = false;                   // a thread is in the queue (or about to be)
  bool background_driving_ = false;
  int waiters_ = 0;                        // threads waiting for the role
  bool wake_pending_ = false;              // the alarm is set
  std::deque<v1::StreamRequest> queued_;
  bool write_in_flight_ = false;           // a Write or WritesDone
  bool half_close_ = false;                // Close asked for WritesDone
  bool half_closed_ = false;               // WritesDone started
  bool write_failed_ = false;
  bool finished_ = false;                  // on_end was called
  bool stopping_ = false;                  // the background thread must end
  bool closed_ = false;
  std::thread background_;
};

}  // namespace spill::client::internal

#endif  // SPILL_CLIENT_STREAM_DRIVER_H_
