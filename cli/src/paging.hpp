// Pages of the list commands (`device list`, `batch list`, `job list`, …): --limit N and
// --after KEY, and the next page's cursor. With --json the answer carries "next_after": the key to
// pass as --after for the next page, or null on the last one; a table ends with that hint.
#pragma once

#include <Poco/Dynamic/Var.h>
#include <Poco/JSON/Object.h>

#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "cli.hpp"
#include "fleetsign/engine/stores.hpp"
#include "fleetsign/error.hpp"

namespace fleetsign::cli {

// --limit and --after, with `help_key` naming what --after takes ("ID", "KEY").
void add_paging_options(Poco::Util::OptionSet& s, const std::string& default_limit,
                        const std::string& help_key);

// The page asked for: --limit (default `default_limit`, 0 = all) and --after. kUsage for a
// negative limit or an empty --after.
engine::ListPage page_args(const Args& a, std::int64_t default_limit);

// The page one item longer, to learn whether another follows without a second query.
inline engine::ListPage one_more(engine::ListPage p) {
  if (p.limit > 0) ++p.limit;
  return p;
}

// Cuts `items` (fetched with one_more) back to the page; the next page's cursor, the key of its
// last item, or null when nothing follows.
template <typename T, typename Key>
Poco::Dynamic::Var cut_page(std::vector<T>& items, const engine::ListPage& page, Key key) {
  if (page.limit <= 0 || static_cast<std::int64_t>(items.size()) <= page.limit) return {};
  items.resize(static_cast<std::size_t>(page.limit));
  return Poco::Dynamic::Var(key(items.back()));
}

// The page of a short list read whole (CAs, groups, operators, incidents), in its order: the
// items after the one whose key is page.after (kNotFound naming `what` when none is), one more
// than the limit (cut_page then trims it).
template <typename T, typename Key>
std::vector<T> page_in_memory(std::vector<T> all, const engine::ListPage& page, Key key,
                              const std::string& what) {
  auto begin = all.begin();
  if (!page.after.empty()) {
    while (begin != all.end() && key(*begin) != page.after) ++begin;
    if (begin == all.end()) {
      throw Error(ErrorCode::kNotFound,
                  "no " + what + " '" + page.after + "' to list the " + what + "s after");
    }
    ++begin;
  }
  auto end = all.end();
  if (page.limit > 0 && end - begin > page.limit) end = begin + page.limit + 1;
  return std::vector<T>(std::make_move_iterator(begin), std::make_move_iterator(end));
}

// "next_after" in a JSON answer; after a table, the hint for the next page.
inline void set_next(Poco::JSON::Object& o, const Poco::Dynamic::Var& next) {
  o.set("next_after", next);
}
void print_next_hint(const Poco::Dynamic::Var& next);

}  // namespace fleetsign::cli
