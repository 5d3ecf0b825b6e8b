#include "worker/rendezvous.h"

#include <map>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace spill::worker {
namespace {

using ::testing::HasSubstr;

absl::StatusOr<RendezvousInfo> FromMap(const std::map<std::string, std::string>& vars) {
  return RendezvousFromEnv([&](const char* name) -> const char* {
    auto it = vars.find(name);
    return it == vars.end() ? nullptr : it->second.c_str();
  });
}

std::map<std::string, std::string> Good() {
  return {{"RANK", "1"}, {"WORLD_SIZE", "4"}, {"LOCAL_RANK", "1"},
          {"MASTER_ADDR", "10.0.0.1"}, {"MASTER_PORT", "29501"}};
}

TEST(RendezvousTest, ReadsTorchrunVariables) {
  auto info = FromMap(Good());
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->rank, 1);
  EXPECT_EQ(info->world_size, 4);
  EXPECT_EQ(info->local_rank, 1);
  EXPECT_EQ(info->master_addr, "10.0.0.1");
  EXPECT_EQ(info->master_port, 29501);
}

TEST(RendezvousTest, NoVariablesIsASingleProcess) {
  auto info = FromMap({});
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->world_size, 1);
  EXPECT_EQ(info->rank, 0);
}

TEST(RendezvousTest, BadVariablesAreNamed) {
  struct Case {
    const char* var;
    const char* value;  // nullptr: unset
    const char* message;
  } cases[] = {
      {"RANK", nullptr, "RANK is not set"},
      {"RANK", "4", "RANK=4 is outside [0, 3]"},
      {"RANK", "-1", "RANK=-1 is outside"},
      {"WORLD_SIZE", "two", "WORLD_SIZE='two' is not an integer"},
      {"WORLD_SIZE", "0", "WORLD_SIZE=0 is outside"},
      {"LOCAL_RANK", "9", "LOCAL_RANK=9 is outside"},
      {"MASTER_PORT", "70000", "MASTER_PORT=70000 is outside [1, 65535]"},
      {"MASTER_PORT", nullptr, "MASTER_PORT is not set"},
      {"MASTER_ADDR", "", "MASTER_ADDR is not set or empty"},
  };
  for (const Case& c : cases) {
    auto vars = Good();
    if (c.value == nullptr) {
      vars.erase(c.var);
    } else {
      vars[c.var] = c.value;
    }
    auto info = FromMap(vars);
    ASSERT_FALSE(info.ok()) << c.var;
    EXPECT_EQ(info.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(info.status().message()), HasSubstr(c.message)) << c.var;
  }
}

}  // namespace
}  // namespace spill::worker
