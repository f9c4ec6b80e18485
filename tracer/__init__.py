"""tracer: filled by its own issue (see ../shared/DESIGN.md)."""
