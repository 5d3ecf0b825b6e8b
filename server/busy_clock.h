// Wall time during which at least one piece of work was running: the union
// of the intervals [Enter, Leave) of every caller, however many overlap.
// spilld's optimizer reports it (spill_optimizer_busy_seconds_total) so a
// worker can tell an idle CPU optimizer from a slow one.
#ifndef SPILL_SERVER_BUSY_CLOCK_H_
#define SPILL_SERVER_BUSY_CLOCK_H_

#include <chrono>
#include <mutex>

namespace spill::server {

class BusyClock {
 public:
  using Clock = std::chrono::steady_clock;

  // Marks one piece of work as running for the scope's lifetime.
  class Scope {
   public:
    explicit Scope(BusyClock& clock) : clock_(clock) { clock_.Enter(Clock::now()); }
    ~Scope() { clock_.Leave(Clock::now()); }
    Scope(const Scope&) = delete;
    Scope& operator=(const Scope&) = delete;

   private:
    BusyClock& clock_;
  };

  void Enter(Clock::time_point now) {
    std::lock_guard<std::mutex> lock(mu_);
    if (active_++ == 0) since_ = now;
  }
  void Leave(Clock::time_point now) {
    std::lock_guard<std::mutex> lock(mu_);
    if (active_ == 0) return;  // Unbalanced: ignored rather than counted.
    if (--active_ == 0) closed_ += now - since_;
  }
  // Busy seconds up to `now`, the running interval included.
  double Seconds(Clock::time_point now = Clock::now()) const {
    std::lock_guard<std::mutex> lock(mu_);
    Clock::duration total = closed_;
    if (active_ > 0 && now > since_) total += now - since_;
    return std::chrono::duration<double>(total).count();
  }

 private:
  mutable std::mutex mu_;
  int active_ = 0;
  Clock::time_point since_;
  Clock::duration closed_{0};
};

}  // namespace spill::server

#endif  // SPILL_SERVER_BUSY_CLOCK_H_
