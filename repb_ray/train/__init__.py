"""Training on Ray: the run's driver, the coordinator actor and its shards, and the worker side.

How one loss becomes the next epoch's plan (file:function, in which process):

    rank r, every step                                        (Train worker)
      train/session.py  PruningSession.batches    rows of D_E from Ray Data, each with its CTR weight
      torch/step.py     TrainStep.batch           loss = mean(w * task.loss(model, batch)); backward
      train/session.py  PruningSession.observe    (step, ids, scores) into the sender's buffer
      train/sender.py   ObservationSender.flush   every observe_every steps: Observations messages,
                                                  one per shard (numbered), fire-and-forget
    rank r, end of epoch E
      train/sender.py   ObservationSender.close   EpochDone(chunks sent) to every shard
      train/session.py  PruningSession.end_epoch  wait_plan(E + 1); then (train/loop.py) the next epoch's
                                                  first batch is fetched (train/prefetch.py) while epoch E
                                                  is evaluated in a thread (torch/evaluation.py)
    coordinator                                               (coordinator actor; shard actors)
      train/shards.py   ShardHost.observe/finish  store the scores; ready once every rank's chunks are in
      train/coordinator.py Coordinator._decide    core.protocol.drive(policy.conduct_next) over the shards:
      core/repb.py      RePBPolicy.conduct_next   window means -> RePBShard.decide: next_epoch_set
                                                  (LWP eq. 1, resampling eq. 2) with the epoch's uniforms;
                        RePBShard.weights_of      ctr_weights (eqs. 3-4); Shard.commit counts N_i
      core/shard.py     Shard.publish             the plan as PlanChunks (bitmask + weights per id range)
      train/coordinator.py _begin_and_publish     chunks in the object store, a PlanIndex, a PlanSummary
    Ray Data, epoch E + 1                                     (Ray Data read tasks)
      data/sources.py   IdBlockSource.get_read_tasks  the files in the epoch's order, skipping files
                                                  without a plan member (PlanIndex.kept_bound)
      data/sources.py   read_block                the id column, data/plan_index.py PlanLookup:
                                                  keep + weight per row, pruned rows never decoded
      data/pipeline.py  apply_preprocess          the task's preprocess on the kept rows
      train/data_config.py PlanDataConfig         equal, disjoint, ordered shares per rank

Public pieces: `Pruning` and `PruningSession` (your own Ray Train loop), `run_training` (the
framework's run), `PlanSummary`. Imported on first use, so `repb_ray.train.run_home` stays light.
"""

from __future__ import annotations

_EXPORTS = {
    "Pruning": "repb_ray.train.pruning",
    "PruningHandle": "repb_ray.train.pruning",
    "PruningSession": "repb_ray.train.session",
    "PlanSummary": "repb_ray.train.messages",
    "run_training": "repb_ray.train.driver",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'repb_ray.train' has no attribute {name!r}")
