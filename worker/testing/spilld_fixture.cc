#include "worker/testing/spilld_fixture.h"

#include "tests/integration/metric_value.h"
#include "tests/integration/spilld_process.h"

namespace spill::worker::testing {
namespace {

class Fixture final : public SpilldFixture {
 public:
  explicit Fixture(std::unique_ptr<spill::testing::SpilldProcess> p) : p_(std::move(p)) {}
  const std::string& socket_path() const override { return p_->socket_path(); }
  int Stop() override { return p_->Stop(); }
  std::string output() const override { return p_->output(); }
  double Metric(const std::string& name) override { return spill::testing::MetricValue(*p_, name); }

 private:
  std::unique_ptr<spill::testing::SpilldProcess> p_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<SpilldFixture>> SpilldFixture::Start(
    std::vector<std::string> flags) {
  auto p = spill::testing::SpilldProcess::Start(std::move(flags));
  if (!p.ok()) return p.status();
  return std::unique_ptr<SpilldFixture>(new Fixture(std::move(*p)));
}

}  // namespace spill::worker::testing
