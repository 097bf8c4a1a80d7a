# hours: spec §10 business hours. The schedules (ShopConfig.business_hours,
# GroupConfig.business_hours, in the shop's time zone) are Python data; what
# the decision reads is C: per shop (Shop.hours_open / hours_until) and per
# group (Group.hours_open / hours_until) the state and the instant until which
# it holds. A shop without any schedule (Shop.timed without TIMED_HOURS) is
# open: the decision tests that bit and looks no further. With one, the
# per-decision test is one comparison of the shop's clock with hours_until;
# only when the clock passes it does model.hours_state compute the next
# transition (about twice a day per schedule, out of line: hours_shop_state,
# hours_group_state). Without a schedule hours_until is HOURS_NEVER (open for
# good). The opening of a shop with
# waiting conversations is a TIMER_HOURS deadline in the timers heap
# (timers.pxd: ShopTimers.hours). The rules: _fastpath/reference/hours.py.

cdef extern from *:
    """
    #define DISPATCH_HOURS_NEVER (253402300799999LL + 1)  /* model.NEVER_MS: after every accepted time */
    """
    const int64_t HOURS_NEVER "DISPATCH_HOURS_NEVER"
