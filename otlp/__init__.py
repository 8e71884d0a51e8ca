"""OTLP receivers and the decoding of OTLP requests into columnar batches."""
