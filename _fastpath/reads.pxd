# reads: the engine's read-only views (spec §9), functions of reads.pyx over the
# structures of shop.pxd, routing.pxd and engine.pxd. This part owns no C types.
