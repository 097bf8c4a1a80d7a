# snapshot: export_state / import_state, the engine's whole state as plain
# data (spec §9: the same state replays to the same answers). The format is
# model.SNAPSHOT_FORMAT, identical for both engines.
#
# This part owns no C types: its functions (snapshot.pyx) read and fill the
# structures of shop.pxd and routing.pxd.
