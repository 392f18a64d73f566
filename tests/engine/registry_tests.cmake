add_executable(registry_test registry_test.cpp registry_issuance_test.cpp)
target_link_libraries(registry_test fleetsign_engine fleetsign_test_postgres GTest::gtest_main)
# LABELS twice, not LABELS "unit;sqlite": gtest_discover_tests flattens a list value, which would
# leave only "unit" (https://gitlab.kitware.com/cmake/cmake/-/issues/17812).
gtest_discover_tests(registry_test PROPERTIES LABELS unit LABELS sqlite)
# The same tests on a real PostgreSQL 15 (support/registry_backend.hpp): prefix pg., label postgres.
gtest_discover_tests(registry_test TEST_PREFIX "pg." PROPERTIES
  ENVIRONMENT FLEETSIGN_TEST_REGISTRY=postgresql LABELS postgres)
