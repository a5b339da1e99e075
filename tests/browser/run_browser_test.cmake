# Runs one browser test file after checking its prerequisites.
# Invoked by CTest as: cmake -DNODE=... -DBROWSER_DIR=... -DTEST_FILE=... -P run_browser_test.cmake
foreach(pkg playwright-core ws @multi-agent-protocol/sdk)
  if(NOT EXISTS "${BROWSER_DIR}/node_modules/${pkg}/package.json")
    message(FATAL_ERROR
      "browser: ${BROWSER_DIR}/node_modules/${pkg} is missing. "
      "Run `npm ci` in tests/browser (cd ${BROWSER_DIR} && npm ci) and re-run the tests.")
  endif()
endforeach()
if(NOT EXISTS "/usr/bin/chromium")
  message(FATAL_ERROR
    "browser: /usr/bin/chromium is missing. Install Debian's Chromium (apt-get install -y chromium) "
    "and re-run the tests.")
endif()
execute_process(
  COMMAND "${NODE}" --test --test-force-exit --test-timeout=240000 "${TEST_FILE}"
  WORKING_DIRECTORY "${BROWSER_DIR}"
  RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "browser: ${TEST_FILE} failed (exit ${rc})")
endif()
