"""Connecting to Ray and sizing trials for the cluster."""

import pytest
import ray

from lifelab.errors import ClusterError
from lifelab.platform.cluster import connect, gpus_per_trial


@pytest.mark.parametrize("resources, cpus_per_trial, expected", [
    ({"CPU": 8, "GPU": 2}, 1, 0.25),     # 4 CPUs per GPU: four 1-CPU trials share a GPU
    ({"CPU": 4, "GPU": 1}, 2, 0.5),
    ({"CPU": 4, "GPU": 1}, 8, 1.0),      # a trial wider than a node still gets a whole GPU
    ({"CPU": 8}, 1, 0.0),                # no GPU: trials run on CPU
])
def test_auto_gpus_pack_trials_onto_gpus(monkeypatch, resources, cpus_per_trial, expected):
    monkeypatch.setattr(ray, "cluster_resources", lambda: resources)
    assert gpus_per_trial(cpus_per_trial) == expected


@pytest.mark.parametrize("failure", [ConnectionError("could not reach GCS\nretrying"),
                                     SystemExit(1)])
def test_unreachable_cluster_is_one_clear_error(monkeypatch, failure):
    # a real unreachable address takes Ray minutes to give up on; its failures look like these
    def refuse(**kwargs):
        assert kwargs["address"] == "head.invalid:6379"
        raise failure

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", refuse)
    # (a port that answers, but no Ray behind it: what Ray itself reports)
    monkeypatch.setattr("lifelab.platform.cluster._reachable", lambda address: None)
    with pytest.raises(ClusterError, match="cannot connect to head.invalid:6379.*ray start --head"):
        connect("head.invalid:6379")
