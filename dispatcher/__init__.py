"""Dispatch: the gRPC service that routes new buyer conversations to a shop's agents.

``dispatcher.server`` holds the grpc.aio servicers, ``dispatcher.cli`` the
``dispatcher serve`` command, ``dispatcher.bootstrap`` the declarative
start-up file, and ``dispatcher._gen`` the code generated from ``protos/``.
"""

__all__ = ["__version__"]

__version__ = "0.1.0"
