"""Ray Train integration: the coordinator actor, the DDP worker loop and the driver."""
