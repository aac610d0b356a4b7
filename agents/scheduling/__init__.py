"""What a worker runs on a schedule: assays, and task runs of orchestrations."""
