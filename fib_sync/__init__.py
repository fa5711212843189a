"""fib_sync."""
