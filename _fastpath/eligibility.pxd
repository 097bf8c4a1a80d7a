# eligibility: who may receive a conversation (spec §2 presence and load, §4
# steps 1-5, §5 "skip agents that are offline, suspended, full, or without chat
# permission", §7 roster membership).

# What a recent contact's agent can do for its buyer (spec §4 step 2).
cdef enum ContactState:
    CONTACT_NONE = 0      # unavailable: deleted, no chat permission, a robot, or offline past the grace
    CONTACT_PRESENT = 1   # ONLINE or SUSPENDED on a client that counts: AFFINITY
    CONTACT_HELD = 2      # OFFLINE for less than the shop's offline grace: AFFINITY_HELD
