// Pages of the list commands (paging.hpp).
#include "paging.hpp"

namespace fleetsign::cli {

void add_paging_options(Poco::Util::OptionSet& s, const std::string& default_limit,
                        const std::string& help_key) {
  add_option(s, "limit", "N", "at most N items (" + default_limit + "; 0: all)");
  add_option(s, "after", help_key,
             "the items after this one (the next page: the last page's next_after)");
}

engine::ListPage page_args(const Args& a, std::int64_t default_limit) {
  engine::ListPage p;
  p.limit = a.get_int("limit").value_or(static_cast<int>(default_limit));
  if (p.limit < 0) throw Error(ErrorCode::kUsage, "--limit must be 0 (all) or more");
  if (const auto after = a.get("after")) {
    if (after->empty()) throw Error(ErrorCode::kUsage, "--after needs the key of an item");
    p.after = *after;
  }
  return p;
}

void print_next_hint(const Poco::Dynamic::Var& next) {
  if (!next.isEmpty()) std::printf("more: --after %s\n", next.toString().c_str());
}

}  // namespace fleetsign::cli
