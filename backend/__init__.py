"""pgcast: live streams and work queues on PostgreSQL."""
