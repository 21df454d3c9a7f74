"""The Ray Train worker loop of the HF adapter test: a PruningTrainer fed by the run's coordinator and
pruned Ray Data epochs, through Ray's own HF integration (prepare_trainer)."""

import tempfile

import numpy as np
from hf_fixtures import args, bert
from ray.train.huggingface.transformers import prepare_trainer

from repb_ray.hf import PruningTrainer
from repb_ray.train import PruningSession


class Recording(PruningTrainer):
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.seen = []

    def _observe(self, step, ids, per_sample):
        self.seen.append((len(self.epochs_log) + 1, step, np.asarray(ids).copy(), per_sample.detach().float().numpy()))
        super()._observe(step, ids, per_sample)


def loop(config):
    session = PruningSession(config["pruning"])
    session.start(None)
    with tempfile.TemporaryDirectory() as out:
        trainer = Recording(model=bert(), args=args(out, per_device_train_batch_size=16, num_train_epochs=3),
                            pruning=session)
        trainer = prepare_trainer(trainer)
        trainer.train()
    seen = trainer.seen
    np.savez(f"{config['out']}/rank{session.rank}.npz", epoch=np.concatenate([np.full(len(i), e) for e, _, i, _ in seen]),
             step=np.concatenate([np.full(len(i), s) for _, s, i, _ in seen]),
             ids=np.concatenate([i for _, _, i, _ in seen]), scores=np.concatenate([c for _, _, _, c in seen]))
    return {"kept": [e["kept"] for e in trainer.epochs_log], "digest": session.summary.digest}
