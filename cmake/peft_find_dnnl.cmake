# Finds oneDNN (Debian libdnnl-dev) and defines the imported target DNNL::dnnl, without oneDNN's
# own dnnl-config.cmake: Debian's requires OpenCL's development files (its GPU runtime), which a
# CPU-only build need not have. Sets PEFT_DNNL_FOUND. Installed with peft's package config.
if(TARGET DNNL::dnnl)
  set(PEFT_DNNL_FOUND TRUE)
  return()
endif()
find_path(PEFT_DNNL_INCLUDE_DIR oneapi/dnnl/dnnl.h)
find_library(PEFT_DNNL_LIBRARY NAMES dnnl)
if(PEFT_DNNL_INCLUDE_DIR AND PEFT_DNNL_LIBRARY)
  add_library(DNNL::dnnl UNKNOWN IMPORTED)
  set_target_properties(DNNL::dnnl PROPERTIES IMPORTED_LOCATION "${PEFT_DNNL_LIBRARY}"
                        INTERFACE_INCLUDE_DIRECTORIES "${PEFT_DNNL_INCLUDE_DIR}")
  set(PEFT_DNNL_FOUND TRUE)
else()
  set(PEFT_DNNL_FOUND FALSE)
endif()
