"""One router per resource; each handler parses, calls the runtime, returns a schema."""
