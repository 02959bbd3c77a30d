"""The long-running process: jobs, schedules, the daemon, status and health."""
