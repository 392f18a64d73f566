// The dashboard's files (cli/dashboard), compiled into the program by cli/dashboard/embed.cmake:
// the service serves them without reading its installation. Private to cli/.
#pragma once

#include <string_view>

namespace fleetsign::cli {

struct DashboardAsset {
  std::string_view name;  // "index.html", "app.js", "app.css"
  std::string_view type;  // its Content-Type
  std::string_view text;
};

// nullptr when there is no file by that name.
const DashboardAsset* dashboard_asset(std::string_view name);

}  // namespace fleetsign::cli
