#include "storage/crc32c.h"

#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace spill::storage {
namespace {

TEST(Crc32cTest, StandardCheckValue) {
  EXPECT_EQ(Crc32c("123456789", 9), 0xE3069283u);
}

TEST(Crc32cTest, KnownVectors) {
  // RFC 3720 B.4: 32 bytes of zeros and of 0xFF.
  std::vector<uint8_t> zeros(32, 0), ones(32, 0xff);
  EXPECT_EQ(Crc32c(zeros.data(), zeros.size()), 0x8A9136AAu);
  EXPECT_EQ(Crc32c(ones.data(), ones.size()), 0x62A8AB43u);
  EXPECT_EQ(Crc32c("", 0), 0u);
}

TEST(Crc32cTest, ChainsOverPiecesAtAnyAlignment) {
  std::string s(10000, '\0');
  for (size_t i = 0; i < s.size(); ++i) s[i] = static_cast<char>(i * 31 + 7);
  const uint32_t whole = Crc32c(s.data(), s.size());
  for (size_t cut : {size_t{0}, size_t{1}, size_t{7}, size_t{4096}, size_t{9999}}) {
    EXPECT_EQ(Crc32c(s.data() + cut, s.size() - cut, Crc32c(s.data(), cut)), whole) << cut;
  }
  s[5000] ^= 1;
  EXPECT_NE(Crc32c(s.data(), s.size()), whole);
}

}  // namespace
}  // namespace spill::storage
