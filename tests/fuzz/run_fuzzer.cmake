# run_fuzzer.cmake - CTest driver for one libFuzzer harness.
#   cmake -DFUZZER=<exe> -DCORPUS=<seed dir> -DWORK=<scratch dir> -DSECONDS=<n> [-DDICT=<file>] -P run_fuzzer.cmake
# Fuzzes a fresh copy of the seed corpus (the seeds themselves stay untouched) for
# SECONDS seconds. Crash reproducers land in <WORK>-artifacts/. Fails on any crash.
foreach(v FUZZER CORPUS WORK SECONDS)
  if(NOT DEFINED ${v})
    message(FATAL_ERROR "run_fuzzer.cmake: -D${v}=... is required")
  endif()
endforeach()

if(DEFINED ENV{MB_FUZZ_SECONDS} AND "$ENV{MB_FUZZ_SECONDS}" MATCHES "^[0-9]+$")
  set(SECONDS $ENV{MB_FUZZ_SECONDS})
endif()

file(REMOVE_RECURSE ${WORK})
file(MAKE_DIRECTORY ${WORK} ${WORK}-artifacts)
file(COPY ${CORPUS}/ DESTINATION ${WORK})

set(args -max_total_time=${SECONDS} -timeout=25 -rss_limit_mb=2048 -max_len=65536
         -print_final_stats=1 -artifact_prefix=${WORK}-artifacts/)
if(DEFINED DICT)
  list(APPEND args -dict=${DICT})
endif()
execute_process(COMMAND ${FUZZER} ${args} ${WORK} RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "fuzzer ${FUZZER} failed (exit ${rc}); reproducers in ${WORK}-artifacts/")
endif()
