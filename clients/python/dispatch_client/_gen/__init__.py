"""Generated code of the dispatch.v1 protobuf package; regenerate with protos/generate.py."""
