#include "worker/config_reader.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <utility>

#include "absl/strings/str_cat.h"

namespace spill::worker::internal {

using nlohmann::json;

std::string FormatNumber(double value) {
  char buf[64];
  for (int precision = 1; precision <= 17; ++precision) {
    std::snprintf(buf, sizeof(buf), "%.*g", precision, value);
    if (std::strtod(buf, nullptr) == value) break;
  }
  return buf;
}

std::string DescribeJson(const json& value) {
  std::string text = value.dump();
  if (text.size() > 40) text = text.substr(0, 37) + "...";
  switch (value.type()) {
    case json::value_t::null: return "null";
    case json::value_t::boolean: return absl::StrCat("a boolean ", text);
    case json::value_t::string: return absl::StrCat("a string ", text);
    case json::value_t::array: return absl::StrCat("an array ", text);
    case json::value_t::object: return absl::StrCat("an object ", text);
    default: return absl::StrCat("a number ", text);
  }
}

Section::Section(const json* obj, std::string prefix, ReadContext* ctx)
    : obj_(obj), prefix_(std::move(prefix)), ctx_(ctx) {}

std::string Section::Key(const std::string& key) const {
  return prefix_.empty() ? key : absl::StrCat(prefix_, ".", key);
}

bool Section::Has(const std::string& key) const {
  return obj_ != nullptr && obj_->contains(key);
}

const json* Section::Raw(const std::string& key) const {
  if (!Has(key)) return nullptr;
  return &(*obj_)[key];
}

void Section::Consume(const std::string& key) { consumed_.insert(key); }

absl::StatusOr<const json*> Section::Lookup(const std::string& key, bool allow_auto) {
  consumed_.insert(key);
  const json* value = Raw(key);
  if (value == nullptr) return nullptr;
  if (value->is_string() && value->get<std::string>() == "auto") {
    if (!allow_auto) {
      return absl::InvalidArgumentError(
          absl::StrCat(Key(key), ": \"auto\" is not accepted here (no rule resolves it); "
                                 "give a value"));
    }
    ctx_->autos.insert(Key(key));
    return nullptr;
  }
  ctx_->present.insert(Key(key));
  return value;
}

absl::Status Section::Bool(const std::string& key, bool* out, bool allow_auto) {
  absl::StatusOr<const json*> value = Lookup(key, allow_auto);
  if (!value.ok()) return value.status();
  if (*value == nullptr) return absl::OkStatus();
  if (!(*value)->is_boolean()) {
    return absl::InvalidArgumentError(
        absl::StrCat(Key(key), ": expected true or false, got ", DescribeJson(**value)));
  }
  *out = (*value)->get<bool>();
  return absl::OkStatus();
}

absl::Status Section::Int(const std::string& key, int64_t* out, int64_t min, int64_t max,
                          bool allow_auto) {
  absl::StatusOr<const json*> value = Lookup(key, allow_auto);
  if (!value.ok()) return value.status();
  if (*value == nullptr) return absl::OkStatus();
  const json& v = **value;
  auto range_error = [&]() {
    return absl::InvalidArgumentError(absl::StrCat(Key(key), ": ", v.dump(),
                                                   " is out of range [", min, ", ", max, "]"));
  };
  int64_t result = 0;
  if (v.is_number_unsigned()) {
    uint64_t u = v.get<uint64_t>();
    if (u > static_cast<uint64_t>(max)) return range_error();
    result = static_cast<int64_t>(u);
  } else if (v.is_number_integer()) {
    result = v.get<int64_t>();
  } else if (v.is_number_float()) {
    double d = v.get<double>();
    if (!std::isfinite(d) || std::floor(d) != d) {
      return absl::InvalidArgumentError(
          absl::StrCat(Key(key), ": expected an integer, got ", DescribeJson(v)));
    }
    if (d < -9.2e18 || d > 9.2e18) return range_error();
    result = static_cast<int64_t>(d);
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat(Key(key), ": expected an integer, got ", DescribeJson(v)));
  }
  if (result < min || result > max) return range_error();
  *out = result;
  return absl::OkStatus();
}

absl::Status Section::Double(const std::string& key, double* out, double min, double max,
                             bool allow_auto) {
  absl::StatusOr<const json*> value = Lookup(key, allow_auto);
  if (!value.ok()) return value.status();
  if (*value == nullptr) return absl::OkStatus();
  const json& v = **value;
  if (!v.is_number()) {
    return absl::InvalidArgumentError(
        absl::StrCat(Key(key), ": expected a number, got ", DescribeJson(v)));
  }
  double d = v.get<double>();
  if (!std::isfinite(d) || d < min || d > max) {
    return absl::InvalidArgumentError(absl::StrCat(Key(key), ": ", v.dump(), " is out of range [",
                                                   FormatNumber(min), ", ", FormatNumber(max),
                                                   "]"));
  }
  *out = d;
  return absl::OkStatus();
}

absl::Status Section::String(const std::string& key, std::string* out) {
  absl::StatusOr<const json*> value = Lookup(key, /*allow_auto=*/false);
  if (!value.ok()) return value.status();
  if (*value == nullptr) return absl::OkStatus();
  if (!(*value)->is_string()) {
    return absl::InvalidArgumentError(
        absl::StrCat(Key(key), ": expected a string, got ", DescribeJson(**value)));
  }
  *out = (*value)->get<std::string>();
  return absl::OkStatus();
}

absl::Status Section::Child(const std::string& key, Section* out) {
  consumed_.insert(key);
  const json* value = Raw(key);
  if (value != nullptr && !value->is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(Key(key), ": expected an object, got ", DescribeJson(*value)));
  }
  *out = Section(value, Key(key), ctx_);
  return absl::OkStatus();
}

void Section::Unsupported(const std::string& key, const std::string& why) {
  consumed_.insert(key);
  const json* value = Raw(key);
  if (value == nullptr) return;
  ctx_->unsupported.push_back(absl::StrCat(Key(key), "=", value->dump(), ": ", why));
}

void Section::Finish() {
  if (obj_ == nullptr) return;
  for (auto it = obj_->begin(); it != obj_->end(); ++it) {
    if (consumed_.count(it.key()) == 0) {
      ctx_->warnings.push_back(absl::StrCat("unknown key '", Key(it.key()), "' (ignored)"));
    }
  }
}

}  // namespace spill::worker::internal
