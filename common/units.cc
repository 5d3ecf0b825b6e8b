#include "common/units.h"

#include <cctype>
#include <limits>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace spill {
namespace {

enum class NumberParse { kOk, kNoDigits, kOverflow };

// Splits "123abc" into digits and suffix. The digits alone can fail to
// parse only by exceeding 64 bits, which callers report as OutOfRange.
NumberParse SplitNumber(absl::string_view text, uint64_t* number, std::string* suffix) {
  size_t i = 0;
  while (i < text.size() && std::isdigit(static_cast<unsigned char>(text[i]))) ++i;
  if (i == 0) return NumberParse::kNoDigits;
  if (!absl::SimpleAtoi(text.substr(0, i), number)) return NumberParse::kOverflow;
  *suffix = absl::AsciiStrToLower(absl::StripAsciiWhitespace(text.substr(i)));
  return NumberParse::kOk;
}

}  // namespace

absl::StatusOr<uint64_t> ParseSize(absl::string_view text) {
  uint64_t number = 0;
  std::string suffix;
  absl::string_view trimmed = absl::StripAsciiWhitespace(text);
  NumberParse parsed = SplitNumber(trimmed, &number, &suffix);
  if (parsed == NumberParse::kOverflow) {
    return absl::OutOfRangeError(absl::StrCat("size '", text, "' overflows 64 bits"));
  }
  if (parsed == NumberParse::kNoDigits) {
    return absl::InvalidArgumentError(absl::StrCat(
        "'", text, "' is not a size: expected a non-negative integer with an "
        "optional unit such as 512MiB, 64GiB or 4096"));
  }
  uint64_t unit = 0;
  if (suffix.empty() || suffix == "b") unit = 1;
  else if (suffix == "k" || suffix == "kib") unit = 1ull << 10;
  else if (suffix == "m" || suffix == "mib") unit = 1ull << 20;
  else if (suffix == "g" || suffix == "gib") unit = 1ull << 30;
  else if (suffix == "t" || suffix == "tib") unit = 1ull << 40;
  else if (suffix == "kb") unit = 1000ull;
  else if (suffix == "mb") unit = 1000ull * 1000;
  else if (suffix == "gb") unit = 1000ull * 1000 * 1000;
  else if (suffix == "tb") unit = 1000ull * 1000 * 1000 * 1000;
  else {
    return absl::InvalidArgumentError(absl::StrCat(
        "'", text, "' has an unknown size unit '", suffix,
        "': use B, KiB, MiB, GiB, TiB, KB, MB, GB or TB"));
  }
  if (number > std::numeric_limits<uint64_t>::max() / unit) {
    return absl::OutOfRangeError(absl::StrCat("size '", text, "' overflows 64 bits"));
  }
  return number * unit;
}

std::string FormatBytes(uint64_t bytes) {
  static constexpr const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
  if (bytes < 1024) return absl::StrCat(bytes, " B");
  double value = static_cast<double>(bytes);
  int unit = 0;
  while (value >= 1024.0 && unit < 5) {
    value /= 1024.0;
    ++unit;
  }
  // "%.1f" would print 1023.96 KiB as "1024.0 KiB".
  if (value >= 1023.95 && unit < 5) {
    value /= 1024.0;
    ++unit;
  }
  return absl::StrFormat("%.1f %s", value, kUnits[unit]);
}

absl::StatusOr<std::chrono::milliseconds> ParseDuration(absl::string_view text) {
  uint64_t number = 0;
  std::string suffix;
  absl::string_view trimmed = absl::StripAsciiWhitespace(text);
  NumberParse parsed = SplitNumber(trimmed, &number, &suffix);
  if (parsed == NumberParse::kOverflow) {
    return absl::OutOfRangeError(absl::StrCat("duration '", text, "' is too long"));
  }
  if (parsed == NumberParse::kNoDigits) {
    return absl::InvalidArgumentError(absl::StrCat(
        "'", text, "' is not a duration: expected an integer with a unit "
        "(ms, s, m, h), such as 30s"));
  }
  uint64_t ms_per_unit = 0;
  if (suffix == "ms") ms_per_unit = 1;
  else if (suffix == "s") ms_per_unit = 1000;
  else if (suffix == "m" || suffix == "min") ms_per_unit = 60'000;
  else if (suffix == "h") ms_per_unit = 3'600'000;
  else {
    return absl::InvalidArgumentError(absl::StrCat(
        "'", text, "' has no or an unknown duration unit: use ms, s, m or h"));
  }
  constexpr uint64_t kMaxMs = uint64_t{1} << 53;
  if (number > kMaxMs / ms_per_unit) {
    return absl::OutOfRangeError(absl::StrCat("duration '", text, "' is too long"));
  }
  return std::chrono::milliseconds(static_cast<int64_t>(number * ms_per_unit));
}

}  // namespace spill
