# strategies: spec §5, the five ways to pick one eligible member of a roster.

# The CAPACITY_ROUND_ROBIN cycle of one roster (spec §5: turns in proportion
# to max capacity, larger capacity first, full agents sit out).
# Invariants when ready: order[0:n_members] lists the roster's members by
# capacity desc then slot; full[i] = capacity of order[i] / gcd of all member
# capacities (its turns per cycle); 0 <= credit[i] <= full[i] is the turns left
# to order[i] in this cycle; cursor is where the current pass resumes.
# ready == 0 means "start a fresh cycle at the next pick" (every configuration
# change sets it, through Shop.rebuild).
ctypedef struct RoundRobin:
    int32_t* order    # member slots in cycle order
    int32_t* credit   # per position in order: turns left this cycle
    int32_t* full     # per position in order: turns per cycle
    int32_t cursor    # next position of the current pass
    int32_t ready     # 0: rebuild the cycle (build_round_robin) before the next pick
