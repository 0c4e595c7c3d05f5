# Runs EXE and passes only if it exits 0 AND its standard output matches
# every regular expression given as EXPECT0, EXPECT1, ... EXPECT9. Used by
# examples/CMakeLists.txt: ctest's PASS_REGULAR_EXPRESSION alone would
# ignore the exit code.
#   cmake -DEXE=path -DEXPECT0=re -DEXPECT1=re ... -P run_and_check.cmake
execute_process(COMMAND "${EXE}"
                RESULT_VARIABLE rc
                OUTPUT_VARIABLE out
                ERROR_VARIABLE err
                TIMEOUT 50)
message("${out}")
if(err)
  message("stderr:\n${err}")
endif()
if(NOT rc STREQUAL "0")
  message(FATAL_ERROR "${EXE} exited with '${rc}'")
endif()
foreach(i RANGE 9)
  set(re "${EXPECT${i}}")
  if(re AND NOT out MATCHES "${re}")
    message(FATAL_ERROR "${EXE}: output does not match '${re}'")
  endif()
endforeach()
