#include "client/admin_format.h"

#include <gtest/gtest.h>

#include "absl/strings/match.h"

namespace spill::client {
namespace {

v1::StatsResponse SampleStats() {
  v1::StatsResponse stats;
  v1::TierStats* pinned = stats.add_tiers();
  pinned->set_name("pinned");
  pinned->set_capacity_bytes(uint64_t{64} << 30);
  pinned->set_used_bytes(uint64_t{3} << 30);
  pinned->set_free_bytes(uint64_t{61} << 30);
  pinned->set_segment_bytes(uint64_t{1} << 30);
  pinned->set_segments_total(64);
  pinned->set_segments_free(60);
  pinned->set_huge_pages(true);
  v1::JobUsage* job = pinned->add_jobs();
  job->set_job_id("llama");
  job->set_used_bytes(uint64_t{3} << 30);
  job->set_reserved_bytes(uint64_t{4} << 30);
  job->set_quota_bytes(0);
  job->set_acquired_bytes(uint64_t{5} << 30);
  job->set_written_back_bytes(77);
  job->set_objects(3);
  job->set_sessions(2);
  stats.set_bytes_in(9'000'000'000'000ull);  // Well past 32 bits.
  stats.set_bytes_out(12345);
  v1::LatencyStats* acquire = stats.add_requests();
  acquire->set_op("acquire");
  acquire->set_count(1000);
  acquire->set_errors(2);
  acquire->set_p50_us(12.5);
  acquire->set_p90_us(20);
  acquire->set_p99_us(48.25);
  acquire->set_max_us(310);
  v1::CodeCount* ok = acquire->add_codes();
  ok->set_code("OK");
  ok->set_count(998);
  v1::CodeCount* missing = acquire->add_codes();
  missing->set_code("NOT_FOUND");
  missing->set_count(2);
  stats.set_uptime_ms(3'723'000);
  stats.set_version("0.1.0");
  stats.set_metrics_address("127.0.0.1:9400");
  return stats;
}

TEST(StatsToJsonTest, HasTheDocumentedKeysWithNumbersAsNumbers) {
  nlohmann::ordered_json json = StatsToJson(SampleStats());
  ASSERT_TRUE(json["tiers"].is_array());
  ASSERT_EQ(json["tiers"].size(), 1u);
  const nlohmann::ordered_json& tier = json["tiers"][0];
  EXPECT_EQ(tier["name"], "pinned");
  EXPECT_TRUE(tier["capacity_bytes"].is_number_unsigned());
  EXPECT_EQ(tier["capacity_bytes"].get<uint64_t>(), uint64_t{64} << 30);
  EXPECT_EQ(tier["used_bytes"].get<uint64_t>(), uint64_t{3} << 30);
  EXPECT_EQ(tier["free_bytes"].get<uint64_t>(), uint64_t{61} << 30);
  EXPECT_EQ(tier["segments_free"], 60);
  EXPECT_EQ(tier["huge_pages"], true);
  ASSERT_EQ(tier["jobs"].size(), 1u);
  EXPECT_EQ(tier["jobs"][0]["job_id"], "llama");
  EXPECT_EQ(tier["jobs"][0]["reserved_bytes"].get<uint64_t>(), uint64_t{4} << 30);
  EXPECT_EQ(tier["jobs"][0]["quota_bytes"], 0);
  EXPECT_EQ(json["bytes_in"].get<uint64_t>(), 9'000'000'000'000ull);
  EXPECT_EQ(json["bytes_out"], 12345);
  EXPECT_EQ(json["uptime_ms"], 3'723'000);
  EXPECT_EQ(json["version"], "0.1.0");
  EXPECT_EQ(json["metrics_address"], "127.0.0.1:9400");
  EXPECT_EQ(tier["jobs"][0]["acquired_bytes"].get<uint64_t>(), uint64_t{5} << 30);
  EXPECT_EQ(tier["jobs"][0]["written_back_bytes"], 77);
  EXPECT_EQ(tier["jobs"][0]["objects"], 3);
  EXPECT_EQ(tier["jobs"][0]["sessions"], 2);
  EXPECT_EQ(json["requests"][0]["codes"]["OK"], 998);
  EXPECT_EQ(json["requests"][0]["codes"]["NOT_FOUND"], 2);
  ASSERT_EQ(json["requests"].size(), 1u);
  EXPECT_EQ(json["requests"][0]["op"], "acquire");
  EXPECT_EQ(json["requests"][0]["count"], 1000);
  EXPECT_DOUBLE_EQ(json["requests"][0]["p99_us"].get<double>(), 48.25);

  // Serialised, 64-bit integers are bare numbers, not protobuf-JSON strings.
  std::string text = json.dump();
  EXPECT_TRUE(absl::StrContains(text, "\"capacity_bytes\":68719476736")) << text;
  EXPECT_FALSE(absl::StrContains(text, "\"68719476736\"")) << text;
}

TEST(StatsToJsonTest, EmptyResponseStillHasEveryTopLevelKey) {
  nlohmann::ordered_json json = StatsToJson(v1::StatsResponse());
  EXPECT_TRUE(json["tiers"].is_array());
  EXPECT_TRUE(json["tiers"].empty());
  EXPECT_TRUE(json["requests"].is_array());
  EXPECT_EQ(json["bytes_in"], 0);
  EXPECT_EQ(json["bytes_out"], 0);
  EXPECT_EQ(json["uptime_ms"], 0);
}

TEST(FormatStatsTest, ShowsTiersJobsAndLatencies) {
  std::string table = FormatStats(SampleStats());
  EXPECT_TRUE(absl::StrContains(table, "spilld up 1h 02m")) << table;
  EXPECT_TRUE(absl::StrContains(table, "TIER")) << table;
  EXPECT_TRUE(absl::StrContains(table, "pinned")) << table;
  EXPECT_TRUE(absl::StrContains(table, "64.0 GiB")) << table;
  EXPECT_TRUE(absl::StrContains(table, "61.0 GiB")) << table;
  EXPECT_TRUE(absl::StrContains(table, "4.7%")) << table;
  EXPECT_TRUE(absl::StrContains(table, "llama")) << table;
  EXPECT_TRUE(absl::StrContains(table, "P99 us")) << table;
  EXPECT_TRUE(absl::StrContains(table, "48.2")) << table;
  EXPECT_FALSE(absl::StrContains(table, " \n")) << "no trailing spaces:\n" << table;
}

TEST(FormatStatsTest, SaysSoWhenThereIsNothing) {
  std::string table = FormatStats(v1::StatsResponse());
  EXPECT_TRUE(absl::StrContains(table, "no tiers")) << table;
  EXPECT_TRUE(absl::StrContains(table, "no requests yet")) << table;
}

v1::JobsResponse SampleJobs() {
  v1::JobsResponse jobs;
  v1::JobInfo* job = jobs.add_jobs();
  job->set_job_id("llama");
  job->set_uid(1000);
  job->set_state("grace");
  job->set_grace_remaining_ms(90'000);
  job->set_objects(12);
  job->set_used_bytes(uint64_t{5} << 30);
  v1::SessionInfo* session = job->add_sessions();
  session->set_session_id(17);
  session->set_rank(3);
  session->set_world_size(8);
  session->set_pid(4242);
  session->set_uid(1000);
  session->set_attached(false);
  session->set_pins(2);
  return jobs;
}

TEST(JobsToJsonTest, NestsSessionsUnderJobs) {
  nlohmann::ordered_json json = JobsToJson(SampleJobs());
  ASSERT_EQ(json["jobs"].size(), 1u);
  const nlohmann::ordered_json& job = json["jobs"][0];
  EXPECT_EQ(job["job_id"], "llama");
  EXPECT_EQ(job["state"], "grace");
  EXPECT_EQ(job["grace_remaining_ms"], 90'000);
  EXPECT_EQ(job["objects"], 12);
  EXPECT_EQ(job["used_bytes"].get<uint64_t>(), uint64_t{5} << 30);
  ASSERT_EQ(job["sessions"].size(), 1u);
  EXPECT_EQ(job["sessions"][0]["session_id"], 17);
  EXPECT_EQ(job["sessions"][0]["rank"], 3);
  EXPECT_EQ(job["sessions"][0]["world_size"], 8);
  EXPECT_EQ(job["sessions"][0]["attached"], false);
  EXPECT_EQ(JobsToJson(v1::JobsResponse())["jobs"].size(), 0u);
}

TEST(FormatJobsTest, ShowsStateGraceAndSessions) {
  std::string table = FormatJobs(SampleJobs());
  EXPECT_TRUE(absl::StrContains(table, "llama")) << table;
  EXPECT_TRUE(absl::StrContains(table, "grace")) << table;
  EXPECT_TRUE(absl::StrContains(table, "1m 30s")) << table;
  EXPECT_TRUE(absl::StrContains(table, "3/8")) << table;
  EXPECT_TRUE(absl::StrContains(table, "4242")) << table;
  EXPECT_EQ(FormatJobs(v1::JobsResponse()), "no jobs\n");
}

TEST(FormatJobsTest, RecoveredJobShowsGraceNvmeObjectsAndANote) {
  v1::JobsResponse jobs;
  v1::JobInfo* job = jobs.add_jobs();
  job->set_job_id("restarted");
  job->set_state("recovered");
  job->set_grace_remaining_ms(120000);
  job->set_objects(5);
  job->set_nvme_objects(4);
  std::string table = FormatJobs(jobs);
  EXPECT_TRUE(absl::StrContains(table, "recovered")) << table;
  EXPECT_TRUE(absl::StrContains(table, "2m")) << table;
  EXPECT_TRUE(absl::StrContains(table, "NVME")) << table;
  EXPECT_TRUE(absl::StrContains(table, "drop-job")) << table;
  EXPECT_EQ(JobsToJson(jobs)["jobs"][0]["nvme_objects"], 4);
  EXPECT_FALSE(absl::StrContains(FormatJobs(SampleJobs()), "drop-job"));
}

TEST(FormatJobsTest, OffloadBudgetsShownWhenSet) {
  v1::JobsResponse jobs;
  v1::JobInfo* job = jobs.add_jobs();
  job->set_job_id("budgeted");
  job->set_state("active");
  job->mutable_param_budget()->set_buffer_count(5);
  job->mutable_param_budget()->set_buffer_size(3 << 20);
  job->mutable_param_budget()->set_max_in_cpu(12345678);
  std::string table = FormatJobs(jobs);
  EXPECT_TRUE(absl::StrContains(table, "MAX IN CPU")) << table;
  EXPECT_TRUE(absl::StrContains(table, "param")) << table;
  EXPECT_FALSE(absl::StrContains(table, "optimizer")) << table;
  auto json = JobsToJson(jobs)["jobs"][0];
  EXPECT_EQ(json["param_budget"]["buffer_count"], 5);
  EXPECT_EQ(json["param_budget"]["buffer_size"], 3 << 20);
  EXPECT_EQ(json["param_budget"]["max_in_cpu"], 12345678);
  EXPECT_TRUE(json["optimizer_budget"].is_null());
  EXPECT_FALSE(absl::StrContains(FormatJobs(SampleJobs()), "MAX IN CPU"));
}

TEST(HealthTest, JsonAndTable) {
  v1::HealthResponse health;
  health.set_status("SERVING");
  health.set_version("0.1.0");
  health.set_uptime_ms(5000);
  health.set_pid(77);
  health.set_socket_path("/run/spill/spilld.sock");
  nlohmann::ordered_json json = HealthToJson(health);
  EXPECT_EQ(json["status"], "SERVING");
  EXPECT_EQ(json["pid"], 77);
  EXPECT_EQ(json["uptime_ms"], 5000);
  EXPECT_EQ(json["socket_path"], "/run/spill/spilld.sock");
  std::string table = FormatHealth(health);
  EXPECT_TRUE(absl::StartsWith(table, "status   SERVING\n")) << table;
  EXPECT_TRUE(absl::StrContains(table, "uptime   5.0s")) << table;
}

TEST(FormatDurationMsTest, PicksAReadableUnit) {
  EXPECT_EQ(FormatDurationMs(250), "250ms");
  EXPECT_EQ(FormatDurationMs(12'345), "12.3s");
  EXPECT_EQ(FormatDurationMs(307'000), "5m 07s");
  EXPECT_EQ(FormatDurationMs(3'720'000), "1h 02m");
  EXPECT_EQ(FormatDurationMs(3 * 86'400'000ull + 4 * 3'600'000ull), "3d 4h");
}

TEST(TextTableTest, PadsAndAlignsColumns) {
  TextTable table({"NAME", "BYTES"}, {false, true});
  table.AddRow({"a", "1"});
  table.AddRow({"longer", "12345"});
  table.AddRow({"short-row"});
  EXPECT_EQ(table.Render("  "),
            "  NAME       BYTES\n"
            "  a              1\n"
            "  longer     12345\n"
            "  short-row\n");
}

}  // namespace
}  // namespace spill::client
