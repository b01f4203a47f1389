# Builds and runs one consumer project (cmake -P script, driven by ctest).
#   MODE            find_package | add_subdirectory | headers_only (install of an unbuilt tree)
#   PEFT_SOURCE_DIR peft's source tree
#   PEFT_BINARY_DIR peft's build tree (find_package mode: installed into WORK_DIR/prefix)
#   CONSUMERS_DIR   tests/consumers
#   WORK_DIR        scratch directory, wiped first
#   GENERATOR, CXX_COMPILER  the parent build's, so the consumer is built the same way
cmake_minimum_required(VERSION 3.20)

foreach(v MODE PEFT_SOURCE_DIR CONSUMERS_DIR WORK_DIR GENERATOR CXX_COMPILER)
  if(NOT DEFINED ${v})
    message(FATAL_ERROR "run_consumer.cmake: -D${v}=... is required")
  endif()
endforeach()

function(run_step what)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "consumer ${MODE}: ${what} failed (${rc})")
  endif()
endfunction()

file(REMOVE_RECURSE ${WORK_DIR})
file(MAKE_DIRECTORY ${WORK_DIR})
set(build ${WORK_DIR}/build)
set(configure_args -S ${CONSUMERS_DIR}/${MODE} -B ${build} -G ${GENERATOR}
    -DCMAKE_CXX_COMPILER=${CXX_COMPILER} -DCMAKE_BUILD_TYPE=Release
    "-DCMAKE_CXX_FLAGS_RELEASE=-O1 -DNDEBUG")  # -O1: they only have to build and agree

if(MODE STREQUAL "find_package")
  if(NOT DEFINED PEFT_BINARY_DIR)
    message(FATAL_ERROR "run_consumer.cmake: -DPEFT_BINARY_DIR=... is required")
  endif()
  set(prefix ${WORK_DIR}/prefix)
  run_step("cmake --install" ${CMAKE_COMMAND} --install ${PEFT_BINARY_DIR} --prefix ${prefix})
  # Only the fresh prefix may provide peft: no package registry, no source tree.
  run_step("configure" ${CMAKE_COMMAND} ${configure_args} -DCMAKE_PREFIX_PATH=${prefix}
           -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF -DCMAKE_FIND_USE_SYSTEM_PACKAGE_REGISTRY=OFF
           -DPEFT_EXPECTED_PREFIX=${prefix})
elseif(MODE STREQUAL "headers_only")
  # Configure peft (nothing built), install, consume.
  set(prefix ${WORK_DIR}/prefix)
  run_step("configure peft" ${CMAKE_COMMAND} -S ${PEFT_SOURCE_DIR} -B ${WORK_DIR}/peft -G ${GENERATOR}
           -DCMAKE_CXX_COMPILER=${CXX_COMPILER} -DCMAKE_BUILD_TYPE=Release)
  run_step("cmake --install (unbuilt)" ${CMAKE_COMMAND} --install ${WORK_DIR}/peft --prefix ${prefix})
  run_step("configure" ${CMAKE_COMMAND} ${configure_args} -DCMAKE_PREFIX_PATH=${prefix}
           -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF -DCMAKE_FIND_USE_SYSTEM_PACKAGE_REGISTRY=OFF)
elseif(MODE STREQUAL "add_subdirectory")
  run_step("configure" ${CMAKE_COMMAND} ${configure_args} -DPEFT_SOURCE_DIR=${PEFT_SOURCE_DIR})
else()
  message(FATAL_ERROR "run_consumer.cmake: unknown MODE '${MODE}'")
endif()

run_step("build" ${CMAKE_COMMAND} --build ${build} --parallel 2)
run_step("run" ${build}/consumer)
if(MODE STREQUAL "find_package")
  # Same program, three ways of consuming peft: the same bits.
  set(_ref "")
  foreach(exe bits_header_only bits_compiled bits_instantiated)
    if(NOT EXISTS ${build}/${exe})
      message(FATAL_ERROR "consumer ${MODE}: ${exe} was not built")
    endif()
    execute_process(COMMAND ${build}/${exe} RESULT_VARIABLE rc OUTPUT_VARIABLE out
                    OUTPUT_STRIP_TRAILING_WHITESPACE)
    if(NOT rc EQUAL 0)
      message(FATAL_ERROR "consumer ${MODE}: ${exe} failed (${rc})")
    endif()
    message(STATUS "consumer ${MODE}: ${exe} -> ${out}")
    if(_ref STREQUAL "")
      set(_ref "${out}")
    elseif(NOT out STREQUAL _ref)
      message(FATAL_ERROR "consumer ${MODE}: ${exe} printed ${out}, bits_header_only ${_ref}")
    endif()
  endforeach()
endif()
message(STATUS "consumer ${MODE}: OK")
