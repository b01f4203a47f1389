# Checks that the umbrella headers are complete (run by ctest as `umbrella_headers`): every
# module umbrella that include/peft/peft.hpp includes (peft/<module>/<module>.hpp) must include
# every other header under include/peft/<module>/ (recursively, except detail/ directories).
# A <module>/<module>.hpp that peft.hpp does not include only gets a warning: it may be a module
# that has no umbrella yet.
# Usage: cmake -DPEFT_INCLUDE_DIR=<repo>/include -P scripts/check_umbrellas.cmake
cmake_minimum_required(VERSION 3.20)
if(NOT DEFINED PEFT_INCLUDE_DIR)
  message(FATAL_ERROR "check_umbrellas.cmake: -DPEFT_INCLUDE_DIR=... is required")
endif()
set(root ${PEFT_INCLUDE_DIR}/peft)

set(missing)
# Headers included by `umbrella` (its #include "peft/..." lines), as paths relative to include/.
function(included_by umbrella out)
  file(STRINGS ${umbrella} lines REGEX "^[ \t]*#[ \t]*include[ \t]*[\"<]peft/")
  set(result)
  foreach(l ${lines})
    string(REGEX REPLACE "^[ \t]*#[ \t]*include[ \t]*[\"<](peft/[^\">]+)[\">].*$" "\\1" h "${l}")
    list(APPEND result ${h})
  endforeach()
  set(${out} ${result} PARENT_SCOPE)
endfunction()

file(GLOB modules LIST_DIRECTORIES true RELATIVE ${root} ${root}/*)
included_by(${root}/peft.hpp top)
foreach(m ${modules})
  set(umbrella ${root}/${m}/${m}.hpp)
  # dist/ is optional (needs MPI) and deliberately not in peft.hpp.
  if(NOT IS_DIRECTORY ${root}/${m} OR m STREQUAL "detail" OR m STREQUAL "dist" OR NOT EXISTS ${umbrella})
    continue()
  endif()
  if(NOT "peft/${m}/${m}.hpp" IN_LIST top)
    message(WARNING "peft/peft.hpp does not include peft/${m}/${m}.hpp (not checked)")
    continue()
  endif()
  included_by(${umbrella} inc)
  file(GLOB_RECURSE headers RELATIVE ${PEFT_INCLUDE_DIR} ${root}/${m}/*.hpp)
  foreach(h ${headers})
    if(h STREQUAL "peft/${m}/${m}.hpp" OR h MATCHES "/detail/")
      continue()
    endif()
    if(NOT h IN_LIST inc)
      list(APPEND missing "peft/${m}/${m}.hpp does not include ${h}")
    endif()
  endforeach()
endforeach()

if(missing)
  list(JOIN missing "\n  " msg)
  message(FATAL_ERROR "incomplete umbrella headers:\n  ${msg}")
endif()
message(STATUS "umbrella headers complete")
