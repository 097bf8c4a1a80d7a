# validation: ids, times and enum numbers checked at the boundary (spec §9:
# malformed input is INVALID_ARGUMENT with a precise message, never a crash).
#
# This part owns no C types: its functions (validation.pyx) take Python values
# and return C values, raising exactly what model.check_id / check_time /
# check_enum raise for anything else.
