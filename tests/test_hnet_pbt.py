"""The hypernetwork under population-based training: a donor's checkpoint of another size is
adapted by the trainable, and a real PBT sweep mutates hnet_hidden through a ladder."""

import json

import pandas as pd
import pytest
import torch

from lifelab.errors import ConfigError
from lifelab.searches.launch import run_sweep
from lifelab.searches.spec import spec_from_dict

SMALL = {"target_hidden": [16], "chunk_size": 300, "task_emb_dim": 8, "chunk_emb_dim": 8,
         "batch_size": 32, "lr": 3e-3, "steps_per_round": 10, "cil_samples": 100}
STREAM = {"tasks": 3, "steps_per_task": 20}


def test_trainable_adapts_a_checkpoint_whose_hypernetwork_is_narrower(ray_session, tmp_path,
                                                                        one_thread_after):
    from lifelab.trainables.trainable import LearnerTrainable

    config = {"learner": "hnet", "stream": STREAM, **SMALL, "hnet_hidden": [8, 8]}
    donor = LearnerTrainable(config=config)
    for _ in range(3):
        donor.train()
    donor.save_checkpoint(str(tmp_path))
    with torch.no_grad():
        before = donor.learner.task_weights(2)
    wider = LearnerTrainable(config={**config, "hnet_hidden": [12, 20], "task_emb_dim": 10})
    wider.load_checkpoint(str(tmp_path))             # -> learner.adapt(state, old_config)
    hnet = wider.learner.model
    assert [layer.out_features for layer in hnet.layers[:-1]] == [12, 20]
    with torch.no_grad():
        assert torch.allclose(wider.learner.task_weights(2), before, atol=1e-6, rtol=0)
    assert wider.learner.rows == donor.learner.rows
    result = wider.train()
    assert result["tasks_seen"] == 2 and result["acc_avg"] > 0.1
    deeper = LearnerTrainable(config={**config, "hnet_hidden": [8, 8, 8]})
    with pytest.raises(ConfigError, match="number of layers"):
        deeper.load_checkpoint(str(tmp_path))


def test_pbt_mutates_hypernetwork_widths_through_a_ladder(ray_session, short_tmp):
    # every trial starts in the middle of the ladder, so the first exploit (whose donor has not
    # been mutated yet) always moves one rung, up or down: a wider or a narrower hypernetwork
    ladder = [[8, 8], [12, 12], [16, 16]]
    rounds = 6
    spec = spec_from_dict({
        "name": "hnet-ladder", "learner": "hnet", "stream": STREAM,
        "config": {**SMALL, "hnet_hidden": [12, 12]},
        "search": {"scheduler": "pbt", "samples": 4, "perturbation_interval": 1,
                   "quantile_fraction": 0.5, "resample_probability": 0.0,
                   "mutations": {"hnet_hidden": ladder}},
        "stop": {"rounds": rounds},
    })
    sweep_uri, results = run_sweep(spec, storage=short_tmp)
    assert len(results) == 4 and not any(r.error for r in results)
    trials = pd.read_parquet(f"{sweep_uri}/results/trials")
    assert set(trials.status) == {"TERMINATED"} and (trials.iterations == rounds).all()
    events = pd.read_parquet(f"{sweep_uri}/results/events").sort_values("iteration")
    assert len(events) >= 1
    first = events.iloc[0]
    old, new = json.loads(first.old_config_json), json.loads(first.new_config_json)
    assert old["hnet_hidden"] == [12, 12] and new["hnet_hidden"] in ([8, 8], [16, 16])
    metrics = pd.read_parquet(f"{sweep_uri}/results/metrics")
    final = metrics[(metrics.name == "acc_avg") & (metrics.iteration == rounds)]
    assert len(final) == 4 and (final.value > 0.1).all()
