# peft_mpiexec_flags(<out-var>): the extra mpiexec flags for running peft's MPI programs from
# ctest. With an OpenMPI mpiexec: --oversubscribe (more ranks than slots is fine for a test),
# waiting ranks yield instead of spinning (ctest -j runs other tests on the same cores), and
# --allow-run-as-root when configured as root (CI runs as root; OpenMPI refuses to start as root
# without it). Empty for other MPIs. Needs find_package(MPI) first.
function(peft_mpiexec_flags out)
  set(flags)
  execute_process(COMMAND ${MPIEXEC_EXECUTABLE} --version OUTPUT_VARIABLE version ERROR_QUIET)
  if(version MATCHES "Open MPI|OpenRTE")
    list(APPEND flags --oversubscribe --mca mpi_yield_when_idle 1)
    execute_process(COMMAND id -u OUTPUT_VARIABLE uid OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
    if(uid STREQUAL "0")
      list(APPEND flags --allow-run-as-root)
    endif()
  endif()
  set(${out} ${flags} PARENT_SCOPE)
endfunction()
