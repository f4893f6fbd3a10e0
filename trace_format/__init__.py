"""The layer-trace file format (docs/trace-format.md): data model, validation, reader and writer."""
