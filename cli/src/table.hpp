// Human output as aligned columns: the widths come from the cells, so long names never shift the
// columns after them. Private to cli/.
#pragma once

#include <algorithm>
#include <cstdio>
#include <string>
#include <vector>

namespace fleetsign::cli {

class Table final {
 public:
  explicit Table(std::vector<std::string> header) { m_rows.push_back(std::move(header)); }
  void add(std::vector<std::string> row) { m_rows.push_back(std::move(row)); }
  std::size_t size() const { return m_rows.size() - 1; }

  // The last column is not padded (it may be long: subjects, messages).
  void print(std::FILE* to = stdout, const std::string& indent = "") const {
    std::vector<std::size_t> width;
    for (const auto& row : m_rows) {
      width.resize(std::max(width.size(), row.size()));
      for (std::size_t i = 0; i < row.size(); ++i) width[i] = std::max(width[i], row[i].size());
    }
    for (const auto& row : m_rows) {
      std::string line = indent;
      for (std::size_t i = 0; i < row.size(); ++i) {
        line += row[i];
        if (i + 1 < row.size()) line += std::string(width[i] - row[i].size() + 2, ' ');
      }
      line.erase(line.find_last_not_of(' ') + 1);
      std::fprintf(to, "%s\n", line.c_str());
    }
  }

 private:
  std::vector<std::vector<std::string>> m_rows;
};

}  // namespace fleetsign::cli
