#include "storage/eviction_policy.h"

#include <algorithm>
#include <tuple>

namespace spill::storage {

void EvictionPolicy::Touch(const ObjectKey& key) {
  last_use_[key] = ++clock_;
  auto it = orders_.find(key.job);
  if (it == orders_.end()) return;
  Order& order = it->second;
  if (order.cursor < order.ids.size() && order.ids[order.cursor] == key.id) ++order.cursor;
}

void EvictionPolicy::Forget(const ObjectKey& key) { last_use_.erase(key); }

void EvictionPolicy::SetAccessOrder(const std::string& job, std::vector<uint64_t> ids) {
  if (ids.empty()) {
    orders_.erase(job);
    return;
  }
  Order order;
  for (uint64_t i = 0; i < ids.size(); ++i) order.positions[ids[i]].push_back(i);
  order.ids = std::move(ids);
  orders_[job] = std::move(order);
}

void EvictionPolicy::ForgetJob(const std::string& job) {
  orders_.erase(job);
  absl::erase_if(last_use_, [&job](const auto& entry) { return entry.first.job == job; });
}

uint64_t EvictionPolicy::NextUseDistance(const ObjectKey& key) const {
  auto it = orders_.find(key.job);
  if (it == orders_.end()) return kNoNextUse;
  const Order& order = it->second;
  auto pos = order.positions.find(key.id);
  if (pos == order.positions.end()) return kNoNextUse;
  auto next = std::lower_bound(pos->second.begin(), pos->second.end(), order.cursor);
  if (next == pos->second.end()) return kNoNextUse;
  return *next - order.cursor;
}

bool EvictionPolicy::HasOrder(const std::string& job) const { return orders_.contains(job); }

uint64_t EvictionPolicy::Cursor(const std::string& job) const {
  auto it = orders_.find(job);
  return it == orders_.end() ? 0 : it->second.cursor;
}

uint64_t EvictionPolicy::LastUse(const ObjectKey& key) const {
  auto it = last_use_.find(key);
  return it == last_use_.end() ? 0 : it->second;
}

EvictionPolicy::RankKey EvictionPolicy::KeyOf(const EvictionCandidate& c) const {
  RankKey k{c.dirty, 1, 0, LastUse(c.key), &c.key.job, c.key.id};
  if (HasOrder(c.key.job)) {
    const uint64_t distance = NextUseDistance(c.key);
    if (distance == kNoNextUse) {
      k.group = 0;
    } else {
      k.group = 2;
      k.neg_next = kNoNextUse - distance;
    }
  }
  return k;
}

std::vector<EvictionCandidate> EvictionPolicy::Rank(
    std::vector<EvictionCandidate> candidates) const {
  std::vector<std::pair<RankKey, size_t>> keys;
  keys.reserve(candidates.size());
  for (size_t i = 0; i < candidates.size(); ++i) keys.emplace_back(KeyOf(candidates[i]), i);
  std::sort(keys.begin(), keys.end(), [](const auto& a, const auto& b) {
    const RankKey& x = a.first;
    const RankKey& y = b.first;
    return std::tie(x.dirty, x.group, x.neg_next, x.last_use, *x.job, x.id) <
           std::tie(y.dirty, y.group, y.neg_next, y.last_use, *y.job, y.id);
  });
  std::vector<EvictionCandidate> ranked;
  ranked.reserve(candidates.size());
  for (const auto& [key, index] : keys) ranked.push_back(std::move(candidates[index]));
  return ranked;
}

std::vector<ObjectKey> EvictionPolicy::ChooseVictims(std::vector<EvictionCandidate> candidates,
                                                     uint64_t need_bytes) const {
  std::vector<ObjectKey> victims;
  if (need_bytes == 0) return victims;
  uint64_t freed = 0;
  for (EvictionCandidate& c : Rank(std::move(candidates))) {
    victims.push_back(std::move(c.key));
    freed += c.bytes;
    if (freed >= need_bytes) return victims;
  }
  return {};
}

}  // namespace spill::storage
