# timers: the rules that fire on time (spec §10 re-route of an unanswered
# conversation and reclaim of an offline agent's; §11 max_queue_wait), and
# time moving without calls (tick). The rules and their choices are written in
# the reference, _fastpath/reference/timers.py; this is the same in C.

cdef enum:
    TIMER_REROUTE = 1     # model.TimerKind.REROUTE: ref = a Track id
    TIMER_RECLAIM = 2     # model.TimerKind.RECLAIM: ref = an agent slot
    TIMER_QUEUE = 3       # model.TimerKind.QUEUE: ref = a Track id
    TIMER_HOURS = 4       # model.TimerKind.HOURS: the shop or a group opens (hours.pyx); ref unused (0)
    CONV_TRACKED = 16     # conversation flag (routing.pxd's CONV_*): Entry.at_ms holds its Track id
