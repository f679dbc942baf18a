"""Live logs: the SSE stream, the per-process hub that wakes it, and NOTIFY/LISTEN."""
