"""Generated gRPC code; regenerate with `make proto` (scripts/gen_proto.py)."""
