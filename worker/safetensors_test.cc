#include "worker/safetensors.h"

#include <stdlib.h>
#include <unistd.h>

#include <bit>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace spill::worker {
namespace {

std::string MakeTempDir() {
  std::string tmpl = ::testing::TempDir() + "/spill-st-XXXXXX";
  if (::mkdtemp(tmpl.data()) == nullptr) return "";
  return tmpl;
}

class SafetensorsTest : public ::testing::Test {
 protected:
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::string Path(const std::string& name) const { return dir_ + "/" + name; }
  // A file of the 8-byte length, `header` and `data`.
  std::string WriteRaw(const std::string& name, const std::string& header, const std::string& data,
                       uint64_t length_override = 0) {
    const std::string path = Path(name);
    std::ofstream out(path, std::ios::binary);
    const uint64_t n = length_override ? length_override : header.size();
    out.write(reinterpret_cast<const char*>(&n), 8);
    out << header << data;
    return path;
  }
  std::string dir_ = MakeTempDir();
};

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

float F(uint32_t bits) { return std::bit_cast<float>(bits); }

TEST(ConversionTest, Bf16KnownAnswers) {
  EXPECT_EQ(Fp32ToBf16(1.0f), 0x3F80);
  EXPECT_EQ(Fp32ToBf16(-2.0f), 0xC000);
  EXPECT_EQ(Fp32ToBf16(0.0f), 0x0000);
  EXPECT_EQ(Fp32ToBf16(-0.0f), 0x8000);
  // Ties: 1 + 2^-8 lies halfway between 1 (even) and 1 + 2^-7.
  EXPECT_EQ(Fp32ToBf16(1.0f + 0x1p-8f), 0x3F80);
  // 1 + 3 * 2^-8: halfway between 1 + 2^-7 (odd) and 1 + 2^-6 (even).
  EXPECT_EQ(Fp32ToBf16(1.0f + 3 * 0x1p-8f), 0x3F82);
  EXPECT_EQ(Fp32ToBf16(F(0x3F808001)), 0x3F81);  // just above the tie
  EXPECT_EQ(Fp32ToBf16(F(0x3F807FFF)), 0x3F80);  // just below
  EXPECT_EQ(Fp32ToBf16(std::numeric_limits<float>::max()),
            0x7F80);  // rounds to inf
  EXPECT_EQ(Fp32ToBf16(std::numeric_limits<float>::infinity()), 0x7F80);
  EXPECT_EQ(Fp32ToBf16(-std::numeric_limits<float>::infinity()), 0xFF80);
  EXPECT_EQ(Fp32ToBf16(std::numeric_limits<float>::quiet_NaN()), 0x7FC0);
  EXPECT_EQ(Fp32ToBf16(F(0x7F800001)),
            0x7FC0);  // NaN payload only in the low bits
  EXPECT_EQ(Fp32ToBf16(F(0xFF800001)), 0xFFC0);
  EXPECT_EQ(Fp32ToBf16(F(0x00000001)), 0x0000);  // fp32 subnormal
  EXPECT_EQ(Fp32ToBf16(F(0x00018000)), 0x0002);  // subnormal tie to even
  EXPECT_EQ(Bf16ToFp32(0x3F82), 1.015625f);
}

TEST(ConversionTest, Fp16KnownAnswers) {
  EXPECT_EQ(Fp32ToFp16(1.0f), 0x3C00);
  EXPECT_EQ(Fp32ToFp16(-2.0f), 0xC000);
  EXPECT_EQ(Fp32ToFp16(-0.0f), 0x8000);
  EXPECT_EQ(Fp32ToFp16(65504.0f), 0x7BFF);
  EXPECT_EQ(Fp32ToFp16(65519.0f), 0x7BFF);
  EXPECT_EQ(Fp32ToFp16(65520.0f), 0x7C00);  // tie between 65504 (odd) and inf
  EXPECT_EQ(Fp32ToFp16(1e6f), 0x7C00);
  EXPECT_EQ(Fp32ToFp16(-1e6f), 0xFC00);
  EXPECT_EQ(Fp32ToFp16(1.0f + 0x1p-11f), 0x3C00);      // tie to even (down)
  EXPECT_EQ(Fp32ToFp16(1.0f + 3 * 0x1p-11f), 0x3C02);  // tie to even (up)
  EXPECT_EQ(Fp32ToFp16(0x1p-14f), 0x0400);             // smallest normal
  EXPECT_EQ(Fp32ToFp16(0x1p-24f), 0x0001);             // smallest subnormal
  EXPECT_EQ(Fp32ToFp16(0x1p-25f), 0x0000);             // tie to even (zero)
  EXPECT_EQ(Fp32ToFp16(F(0x33000001)), 0x0001);        // just above 2^-25
  EXPECT_EQ(Fp32ToFp16(3 * 0x1p-25f), 0x0002);         // tie to even (up)
  EXPECT_EQ(Fp32ToFp16(0x1p-14f - 0x1p-25f),
            0x0400);  // rounds up into the normals
  EXPECT_EQ(Fp32ToFp16(1e-10f), 0x0000);
  EXPECT_EQ(Fp32ToFp16(std::numeric_limits<float>::infinity()), 0x7C00);
  EXPECT_EQ(Fp32ToFp16(-std::numeric_limits<float>::infinity()), 0xFC00);
  EXPECT_EQ(Fp32ToFp16(std::numeric_limits<float>::quiet_NaN()), 0x7E00);
  EXPECT_EQ(Fp32ToFp16(F(0x7F800001)) & 0x7C00, 0x7C00);  // still NaN ...
  EXPECT_NE(Fp32ToFp16(F(0x7F800001)) & 0x03FF, 0);       // ... not inf
  EXPECT_EQ(Fp16ToFp32(0x0001), 0x1p-24f);
  EXPECT_EQ(Fp16ToFp32(0x7BFF), 65504.0f);
  EXPECT_TRUE(std::isnan(Fp16ToFp32(0x7E00)));
}

// Every fp16 and bf16 value converts back to itself.
TEST(ConversionTest, SixteenBitValuesRoundTrip) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const uint16_t v = static_cast<uint16_t>(h);
    const float f16 = Fp16ToFp32(v), bf = Bf16ToFp32(v);
    if (!std::isnan(f16)) {
      ASSERT_EQ(Fp32ToFp16(f16), v) << std::hex << h;
    }
    if (!std::isnan(bf)) {
      ASSERT_EQ(Fp32ToBf16(bf), v) << std::hex << h;
    }
  }
}

// Nearest 16-bit value by comparing distances in double, ties to even: an
// independent reference for a sweep over fp32 bit patterns.
template <typename Decode>
uint16_t Nearest(float f, uint16_t lo, Decode decode) {
  const uint16_t hi = static_cast<uint16_t>(lo + 1);
  const double dl = std::fabs(static_cast<double>(decode(lo)) - static_cast<double>(f));
  const double dh = std::fabs(static_cast<double>(decode(hi)) - static_cast<double>(f));
  if (dl != dh) return dl < dh ? lo : hi;
  return (lo & 1) ? hi : lo;
}

TEST(ConversionTest, SweepMatchesReference) {
  for (uint64_t bits = 0; bits < (uint64_t{1} << 32); bits += 9973) {
    const float f = F(static_cast<uint32_t>(bits));
    if (std::isnan(f)) continue;
    const uint16_t sign = (bits >> 16) & 0x8000;
    const float a = std::fabs(f);
    // bf16: truncation is the candidate below; one above may be inf.
    const uint16_t bl = static_cast<uint16_t>(std::bit_cast<uint32_t>(a) >> 16);
    // 0x7F80 stands for 2^128 here: IEEE rounds as if the exponent were
    // unbounded.
    auto decode = [](uint16_t b) {
      return b == 0x7F80 ? std::ldexp(1.0, 128) : static_cast<double>(Bf16ToFp32(b));
    };
    uint16_t want = std::isinf(a) ? 0x7F80 : Nearest(a, bl, decode);
    ASSERT_EQ(Fp32ToBf16(f), sign | want) << std::hex << bits;
#ifdef __FLT16_MAX__
    ASSERT_EQ(Fp32ToFp16(f), std::bit_cast<uint16_t>(static_cast<_Float16>(f))) << std::hex << bits;
#endif
  }
}

TEST_F(SafetensorsTest, WritesAndReadsBack) {
  const std::string path = Path("a.safetensors");
  std::vector<StTensorSpec> specs = {{"w", StDType::kF32, {2, 3}},
                                     {"b", StDType::kBF16, {3}},
                                     {"h", StDType::kF16, {0}},
                                     {"s", StDType::kF16, {}}};
  auto w = SafetensorsWriter::Create(path, specs, {{"format", "pt"}});
  ASSERT_TRUE(w.ok()) << w.status();
  const std::vector<float> wv = {1, 2, 3, 4, 5, 6}, bv = {1.5f, -2, 3}, sv = {0.5f};
  ASSERT_TRUE((*w)->AppendFloats(wv, StDType::kF32).ok());
  ASSERT_TRUE((*w)->AppendFloats(bv, StDType::kBF16).ok());
  ASSERT_TRUE((*w)->AppendFloats(sv, StDType::kF16).ok());
  EXPECT_FALSE(std::filesystem::exists(path));  // not before Commit
  ASSERT_TRUE((*w)->Commit().ok());
  w->reset();

  auto f = SafetensorsFile::Open(path);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(f->metadata().at("format"), "pt");
  ASSERT_EQ(f->tensors().size(), 4u);
  const StTensorInfo* t = f->Find("w");
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->shape, (std::vector<int64_t>{2, 3}));
  std::vector<float> got(6);
  ASSERT_TRUE(f->ReadBytes(*t, 0, got.data(), 24).ok());
  EXPECT_EQ(got, wv);
  uint16_t b[3];
  ASSERT_TRUE(f->ReadBytes(*f->Find("b"), 0, b, 6).ok());
  EXPECT_EQ(Bf16ToFp32(b[0]), 1.5f);
  EXPECT_EQ(Bf16ToFp32(b[1]), -2.0f);
  EXPECT_EQ(f->Find("s")->shape.size(), 0u);
  EXPECT_EQ(f->Find("s")->numel(), 1);
  EXPECT_EQ(f->Find("nope"), nullptr);
  // Header: 8-byte aligned, deterministic.
  const std::string bytes = ReadAll(path);
  uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);
  EXPECT_EQ(n % 8, 0u);
  const std::string path2 = Path("b.safetensors");
  auto w2 = SafetensorsWriter::Create(path2, specs, {{"format", "pt"}});
  ASSERT_TRUE(w2.ok());
  ASSERT_TRUE((*w2)->AppendFloats(wv, StDType::kF32).ok());
  ASSERT_TRUE((*w2)->AppendFloats(bv, StDType::kBF16).ok());
  ASSERT_TRUE((*w2)->AppendFloats(sv, StDType::kF16).ok());
  ASSERT_TRUE((*w2)->Commit().ok());
  EXPECT_EQ(ReadAll(path2), bytes);
  EXPECT_EQ(f->ReadBytes(*t, 20, got.data(), 8).code(), absl::StatusCode::kOutOfRange);
}

TEST_F(SafetensorsTest, WriterRefusesBadUseAndLeavesOldFile) {
  const std::string path = Path("keep.safetensors");
  { std::ofstream(path) << "old"; }
  EXPECT_EQ(
      SafetensorsWriter::Create(path, {{"a", StDType::kF32, {1}}, {"a", StDType::kF32, {1}}}, {})
          .status()
          .code(),
      absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(
      SafetensorsWriter::Create(path, {{"__metadata__", StDType::kF32, {1}}}, {}).status().code(),
      absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(SafetensorsWriter::Create(path, {{"a", StDType::kF32, {-1}}}, {}).status().code(),
            absl::StatusCode::kInvalidArgument);
  {
    auto w = SafetensorsWriter::Create(path, {{"a", StDType::kF32, {2}}}, {});
    ASSERT_TRUE(w.ok());
    const float v[3] = {1, 2, 3};
    EXPECT_EQ((*w)->Append(v, 12).code(), absl::StatusCode::kFailedPrecondition);
    ASSERT_TRUE((*w)->Append(v, 4).ok());
    const absl::Status s = (*w)->Commit();
    EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_NE(s.message().find("4 of 8 data bytes"), std::string::npos) << s;
  }
  EXPECT_EQ(ReadAll(path), "old");
  EXPECT_EQ(std::distance(std::filesystem::directory_iterator(dir_), {}),
            1);  // no temp left
}

struct BadCase {
  std::string name, header, data;
  uint64_t length_override;
  std::string expect;
};

TEST_F(SafetensorsTest, ReaderRejectsMalformedFiles) {
  const std::string f8(8, '\0');
  const std::vector<BadCase> cases = {
      {"len_beyond", R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", std::string(4, 0),
       1000, "header length 1000 is beyond"},
      {"huge_len", "{}", "", uint64_t{1} << 40, "is beyond"},
      {"not_json", "{\"a\": nope}", "", 0, "not a JSON object"},
      {"array", "[1,2]", "", 0, "not a JSON object"},
      {"overlap",
       R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
       f8, 0, "overlap"},
      {"hole",
       R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})",
       std::string(12, 0), 0, "leave a hole"},
      {"out_of_range", R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", f8, 0,
       "truncated"},
      {"trailing", R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", f8, 0, "trailing"},
      {"dtype", R"({"a":{"dtype":"I64","shape":[1],"data_offsets":[0,8]}})", f8, 0,
       "expected one of F32"},
      {"product", R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", f8, 0, "needs 12"},
      {"neg_shape", R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", f8, 0,
       "bad shape"},
      {"reversed", R"({"a":{"dtype":"F32","shape":[0],"data_offsets":[8,0]}})", f8, 0,
       "end < begin"},
      {"no_offsets", R"({"a":{"dtype":"F32","shape":[2]}})", f8, 0, "data_offsets"},
      {"meta", R"({"__metadata__":{"k":1}})", "", 0, "not a string"},
  };
  for (const BadCase& c : cases) {
    const std::string path = WriteRaw(c.name, c.header, c.data, c.length_override);
    const auto f = SafetensorsFile::Open(path);
    ASSERT_EQ(f.status().code(), absl::StatusCode::kDataLoss) << c.name << ": " << f.status();
    EXPECT_NE(f.status().message().find(path), std::string::npos) << c.name << ": " << f.status();
    EXPECT_NE(f.status().message().find(c.expect), std::string::npos)
        << c.name << ": " << f.status();
  }
  { std::ofstream(Path("short")) << "abc"; }
  EXPECT_EQ(SafetensorsFile::Open(Path("short")).status().code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(SafetensorsFile::Open(Path("absent")).status().code(), absl::StatusCode::kNotFound);
}

TEST_F(SafetensorsTest, ReadAfterTruncationIsDataLoss) {
  const std::string path = Path("t.safetensors");
  auto w = SafetensorsWriter::Create(path, {{"x", StDType::kF32, {4}}}, {});
  ASSERT_TRUE(w.ok());
  const float v[4] = {1, 2, 3, 4};
  ASSERT_TRUE((*w)->Append(v, 16).ok());
  ASSERT_TRUE((*w)->Commit().ok());
  auto f = SafetensorsFile::Open(path);
  ASSERT_TRUE(f.ok());
  std::filesystem::resize_file(path, std::filesystem::file_size(path) - 4);
  float got[4];
  const absl::Status s = f->ReadBytes(*f->Find("x"), 0, got, 16);
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(s.message().find(path), std::string::npos);
  EXPECT_NE(s.message().find("'x'"), std::string::npos);
}

}  // namespace
}  // namespace spill::worker
