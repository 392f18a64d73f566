add_executable(registry_test registry_test.cpp)
target_link_libraries(registry_test fleetsign_engine GTest::gtest_main)
gtest_discover_tests(registry_test PROPERTIES LABELS "unit;sqlite")
