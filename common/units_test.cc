#include "common/units.h"

#include <chrono>
#include <cstdint>
#include <string>

#include "gtest/gtest.h"

namespace spill {
namespace {

TEST(ParseSizeTest, AcceptsNumbersAndUnits) {
  struct Case {
    const char* text;
    uint64_t want;
  } cases[] = {
      {"0", 0},
      {"4096", 4096},
      {"17B", 17},
      {"1k", 1024},
      {"1KiB", 1024},
      {"512MiB", uint64_t{512} << 20},
      {"64GiB", uint64_t{64} << 30},
      {"2t", uint64_t{2} << 40},
      {"2TiB", uint64_t{2} << 40},
      {"512MB", 512'000'000},
      {"1kb", 1000},
      {"3GB", 3'000'000'000},
      {"1TB", 1'000'000'000'000},
      {"64gib", uint64_t{64} << 30},  // Case-insensitive.
      {"64 GiB", uint64_t{64} << 30},
      {"  8m  ", uint64_t{8} << 20},
      {"18446744073709551615", UINT64_MAX},
      {"16777215TiB", uint64_t{16777215} << 40},
  };
  for (const Case& c : cases) {
    absl::StatusOr<uint64_t> got = ParseSize(c.text);
    ASSERT_TRUE(got.ok()) << "'" << c.text << "': " << got.status();
    EXPECT_EQ(*got, c.want) << "'" << c.text << "'";
  }
}

TEST(ParseSizeTest, RejectsMalformedText) {
  for (const char* text : {"", " ", "-5", "-5GiB", "+5", "GiB", "abc", "1.5GiB", "5XB", "5 EiB",
                           "5kibb", "0x10", "5 5"}) {
    absl::StatusOr<uint64_t> got = ParseSize(text);
    EXPECT_EQ(got.status().code(), absl::StatusCode::kInvalidArgument) << "'" << text << "'";
  }
  // The message quotes the input and, for a unit, lists the valid ones.
  absl::Status unit = ParseSize("5XB").status();
  EXPECT_NE(std::string(unit.message()).find("'5XB'"), std::string::npos) << unit;
  EXPECT_NE(std::string(unit.message()).find("GiB"), std::string::npos) << unit;
}

TEST(ParseSizeTest, OverflowIsOutOfRange) {
  for (const char* text : {"16777216TiB", "17179869184GiB", "18446744073709551616",
                           "99999999999999999999999", "18446744073709551615k"}) {
    absl::StatusOr<uint64_t> got = ParseSize(text);
    EXPECT_EQ(got.status().code(), absl::StatusCode::kOutOfRange) << "'" << text << "'";
  }
}

TEST(FormatBytesTest, PicksTheLargestUnitBelow1024) {
  EXPECT_EQ(FormatBytes(0), "0 B");
  EXPECT_EQ(FormatBytes(1023), "1023 B");
  EXPECT_EQ(FormatBytes(1024), "1.0 KiB");
  EXPECT_EQ(FormatBytes(1536), "1.5 KiB");
  EXPECT_EQ(FormatBytes(uint64_t{512} << 20), "512.0 MiB");
  EXPECT_EQ(FormatBytes(uint64_t{3} << 30), "3.0 GiB");
  EXPECT_EQ(FormatBytes(uint64_t{1} << 40), "1.0 TiB");
  EXPECT_EQ(FormatBytes(uint64_t{1} << 50), "1.0 PiB");
  // Just below a unit rounds up into it rather than printing "1024.0 KiB".
  EXPECT_EQ(FormatBytes((uint64_t{1} << 20) - 1), "1.0 MiB");
  EXPECT_EQ(FormatBytes(UINT64_MAX), "16384.0 PiB");
}

TEST(FormatBytesTest, RoundTripsThroughParseSize) {
  for (uint64_t bytes : {uint64_t{1} << 10, uint64_t{7} << 20, uint64_t{64} << 30}) {
    std::string text = FormatBytes(bytes);
    text.erase(text.find(".0"), 2);  // "7.0 MiB" -> "7 MiB"
    EXPECT_EQ(ParseSize(text).value(), bytes) << text;
  }
}

TEST(ParseDurationTest, AcceptsUnits) {
  using std::chrono::milliseconds;
  EXPECT_EQ(ParseDuration("250ms").value(), milliseconds(250));
  EXPECT_EQ(ParseDuration("0s").value(), milliseconds(0));
  EXPECT_EQ(ParseDuration("30s").value(), milliseconds(30'000));
  EXPECT_EQ(ParseDuration("5m").value(), milliseconds(300'000));
  EXPECT_EQ(ParseDuration("5min").value(), milliseconds(300'000));
  EXPECT_EQ(ParseDuration("2h").value(), milliseconds(7'200'000));
  EXPECT_EQ(ParseDuration(" 2 H ").value(), milliseconds(7'200'000));
}

TEST(ParseDurationTest, RejectsMalformedText) {
  for (const char* text : {"", "30", "-5", "-5s", "s", "5d", "1.5s", "5 sec", "abc"}) {
    EXPECT_EQ(ParseDuration(text).status().code(), absl::StatusCode::kInvalidArgument)
        << "'" << text << "'";
  }
}

TEST(ParseDurationTest, OverflowIsOutOfRange) {
  for (const char* text : {"9007199254740993ms", "2501999792984h", "99999999999999999999999s"}) {
    EXPECT_EQ(ParseDuration(text).status().code(), absl::StatusCode::kOutOfRange)
        << "'" << text << "'";
  }
  // The largest accepted value, 2^53 ms.
  EXPECT_TRUE(ParseDuration("9007199254740992ms").ok());
}

}  // namespace
}  // namespace spill
