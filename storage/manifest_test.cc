#include "storage/manifest.h"

#include <fcntl.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "storage/crc32c.h"
#include "storage/nvme_test_util.h"
#include "storage/test_util.h"

namespace spill::storage {
namespace {

using test_util::TempDir;
using ::testing::HasSubstr;

Manifest Sample(uint64_t generation) {
  Manifest m{generation, {}};
  for (int j = 0; j < 2; ++j) {
    ManifestJob job{"job-" + std::to_string(j), 1000u + j, {}};
    for (int o = 0; o < 3; ++o) {
      ManifestObject obj;
      obj.id = generation * 100 + o;
      obj.name = "layer" + std::to_string(o) + ".weight \"q\"";
      obj.kind = o;
      obj.dtype = 2;
      obj.num_elements = 1000 + o;
      obj.version = generation;
      obj.bytes = 2000 + o;
      obj.extent = {2000u + o, {{0, 4096u * o, 1 << 20}, {1, 8192u * o, 1 << 20}}};
      obj.crcs = {0xdeadbeef, static_cast<uint32_t>(generation)};
      job.objects.push_back(obj);
    }
    m.jobs.push_back(job);
  }
  return m;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

TEST(ManifestTest, PublishThenLoadRoundTrips) {
  TempDir tmp;
  EXPECT_EQ(LoadManifest(tmp.path()).status().code(), absl::StatusCode::kNotFound);
  ASSERT_TRUE(PublishManifest(tmp.path(), Sample(1)).ok());
  ASSERT_OK_AND_ASSIGN(m, LoadManifest(tmp.path()));
  EXPECT_EQ(m, Sample(1));
  ASSERT_TRUE(PublishManifest(tmp.path(), Sample(2)).ok());
  ASSERT_OK_AND_ASSIGN(m2, LoadManifest(tmp.path()));
  EXPECT_EQ(m2, Sample(2));
  ASSERT_TRUE(PublishManifest(tmp.path(), Manifest{3, {}}).ok());
  ASSERT_OK_AND_ASSIGN(empty, LoadManifest(tmp.path()));
  EXPECT_EQ(empty, (Manifest{3, {}}));
  // Only the manifest is left: no temporary files.
  int files = 0;
  for (const auto& e : std::filesystem::directory_iterator(tmp.path())) {
    (void)e;
    ++files;
  }
  EXPECT_EQ(files, 1);
}

TEST(ManifestTest, PublishRemovesStaleTempsAndFailsCleanlyInMissingDir) {
  TempDir tmp;
  std::ofstream(tmp.path() + "/manifest.tmp.1.0") << "half written";
  ASSERT_TRUE(PublishManifest(tmp.path(), Sample(1)).ok());
  EXPECT_FALSE(std::filesystem::exists(tmp.path() + "/manifest.tmp.1.0"));
  absl::Status s = PublishManifest(tmp.path() + "/missing", Sample(1));
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr("missing"));
}

TEST(ManifestTest, EveryTruncationIsDataLossNeverPartial) {
  const std::string bytes = EncodeManifest(Sample(5));
  for (size_t len = 0; len < bytes.size(); ++len) {
    auto m = DecodeManifest(bytes.substr(0, len), "m");
    ASSERT_FALSE(m.ok()) << "truncated to " << len;
    ASSERT_EQ(m.status().code(), absl::StatusCode::kDataLoss) << len << ": " << m.status();
  }
  ASSERT_TRUE(DecodeManifest(bytes, "m").ok());
  EXPECT_EQ(DecodeManifest(bytes + "x", "m").status().code(), absl::StatusCode::kDataLoss);
}

TEST(ManifestTest, EveryBitFlipIsDataLoss) {
  const std::string bytes = EncodeManifest(Sample(6));
  for (size_t i = 0; i < bytes.size(); ++i) {
    for (int bit = 0; bit < 8; bit += 3) {
      std::string bad = bytes;
      bad[i] = static_cast<char>(bad[i] ^ (1 << bit));
      auto m = DecodeManifest(bad, "m");
      ASSERT_EQ(m.status().code(), absl::StatusCode::kDataLoss) << "byte " << i << " bit " << bit;
    }
  }
}

TEST(ManifestTest, CorruptFileOnDiskIsDataLossNamingTheFile) {
  TempDir tmp;
  ASSERT_TRUE(PublishManifest(tmp.path(), Sample(7)).ok());
  const std::string path = tmp.path() + "/manifest";
  std::string bytes = ReadFile(path);
  bytes[bytes.size() / 2] ^= 0x10;
  std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
  auto m = LoadManifest(tmp.path());
  ASSERT_EQ(m.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(m.status().message()), HasSubstr(path));
  EXPECT_THAT(std::string(m.status().message()), HasSubstr("CRC32C"));
  ASSERT_EQ(::truncate(path.c_str(), 10), 0);
  m = LoadManifest(tmp.path());
  ASSERT_EQ(m.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(m.status().message()), HasSubstr("header"));
}

TEST(ManifestTest, WellFramedButMalformedContentIsDataLoss) {
  // A valid header and checksum over JSON with the wrong shape.
  std::string good = EncodeManifest(Manifest{1, {}});
  for (const std::string& payload : {std::string("{\"generation\":\"x\",\"jobs\":[]}"),
                                    std::string("[1,2]"), std::string("{\"jobs\":[]}"),
                                    std::string("not json")}) {
    std::string bytes = good.substr(0, 8);
    for (int i = 0; i < 8; ++i) bytes.push_back(static_cast<char>((payload.size() >> (8 * i)) & 0xff));
    const uint32_t crc = Crc32c(payload.data(), payload.size());
    for (int i = 0; i < 4; ++i) bytes.push_back(static_cast<char>((crc >> (8 * i)) & 0xff));
    bytes += payload;
    EXPECT_EQ(DecodeManifest(bytes, "m").status().code(), absl::StatusCode::kDataLoss) << payload;
  }
}

}  // namespace
}  // namespace spill::storage
