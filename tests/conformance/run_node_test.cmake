# Runs one conformance file: node --test <file>, after checking node_modules.
# Invoked by CTest as: cmake -DNODE=... -DCONF_DIR=... -DTEST_FILE=... -P run_node_test.cmake
if(NOT EXISTS "${CONF_DIR}/node_modules/@multi-agent-protocol/sdk/package.json"
   OR NOT EXISTS "${CONF_DIR}/node_modules/ws/package.json")
  message(FATAL_ERROR
    "conformance: ${CONF_DIR}/node_modules is missing. "
    "Run `npm ci` in tests/conformance (cd ${CONF_DIR} && npm ci) and re-run the tests.")
endif()
execute_process(
  COMMAND "${NODE}" --test --test-force-exit --test-timeout=120000 "${TEST_FILE}"
  WORKING_DIRECTORY "${CONF_DIR}"
  RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "conformance: ${TEST_FILE} failed (exit ${rc})")
endif()
