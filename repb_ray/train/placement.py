"""Where a run's own actors (the coordinator, its shards, the progress board) are placed: on the node of the
process that creates them (the driver's), when it has room, else anywhere. A worker node can be preempted
or taken away by the autoscaler; the driver's node lives as long as the run does. Outside any Tune trial's
placement group either way. Runs in the driver and in the coordinator."""

from __future__ import annotations


def near_here():
    """A soft node-affinity strategy for the current process's node."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
    return NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=True)
