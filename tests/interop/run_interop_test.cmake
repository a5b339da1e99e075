# Runs one interop file (through the conformance runner) after checking both
# installs it needs: the clients here and the conformance harness it reuses.
get_filename_component(_conf "${CONF_DIR}/../conformance" ABSOLUTE)
foreach(p "${CONF_DIR}/node_modules/agent-inbox" "${CONF_DIR}/node_modules/macro-agent" "${_conf}/node_modules/ws")
  if(NOT EXISTS "${p}/package.json")
    message(FATAL_ERROR "interop: ${p} is missing. Run `npm ci` in tests/interop and tests/conformance, then re-run the tests.")
  endif()
endforeach()
include(${_conf}/run_node_test.cmake)
