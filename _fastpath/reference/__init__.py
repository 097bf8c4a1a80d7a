"""The pure-Python reference engine: the routing rules of the spec, written to be read.

It has exactly the API and behaviour of the compiled engine
(``_fastpath._core``); ``tests/test_differential.py`` drives both with the
same random event streams and demands identical answers and identical state.
Where the two could disagree only in how they store things (hash tables,
heaps), this one uses the plainest structure (dicts, lists, sorting) so that
it stays obviously right. Section numbers (§) refer to the dispatch rules
(``dispatcher/docs/dispatch-rules.md``).

Its parts mirror the compiled engine's, in the same order, under the same
names (``constants.pxi``, ``validation.pyx``, ... ``snapshot.pyx``):

- constants: ``_fastpath.model`` (limits, enums, errors, shared helpers).
- (the compiled C tables, hashtable and heap, have no twin here: dicts,
  lists and sorting stand in for them.)
- ``validation``: argument checks at the boundary (§9).
- ``eligibility``: who may receive (§2, §4, §5, §7): ``available``,
  ``eligible``, ``contact_state``, the rosters, the group tests.
- ``strategies``: §5, each strategy as a function over a roster's eligible agents.
- ``shop``: storage: shops, agents, groups, waiting conversations, the day
  cache, the PRNG, and their invariants.
- ``hours``: §10 business hours: open or closed at the shop's time, the
  decision while closed, the opening deadline.
- ``routing``: ``Router``, the tables and the decision: ``decide``,
  ``offline``, ``route``, ``assign``, ``remember``, ``settle`` (§4, §6, §7, §8).
- ``timers``: the rules that fire on time (§10 re-route and reclaim, §11
  ``max_queue_wait``) and ``tick``: pending deadlines per shop, fired in
  (deadline, seq) order.
- ``engine``: ``ReferenceEngine(Router)``, the public calls: configuration
  and events (§8), dispatch (§3, §4), reads (§9).
- wire: ``_fastpath.wire`` (the reference codec of the wire calls).
- ``snapshot``: ``export_state`` / ``import_state``.
"""

from __future__ import annotations

from .engine import ReferenceEngine

__all__ = ["ReferenceEngine"]
