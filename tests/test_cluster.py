"""Connecting to Ray and sizing trials for the cluster."""

import pytest
import ray

from lifelab.errors import ClusterError, ConfigError
from lifelab.platform import cluster
from lifelab.platform.cluster import check_resources, connect, gpus_per_trial

CPU_NODE = {"CPU": 4, "memory": 8_000_000_000}
GPU_NODE = {"CPU": 4, "GPU": 1}


@pytest.mark.parametrize("resources, cpus_per_trial, expected", [
    ({"CPU": 8, "GPU": 2}, 1, 0.25),     # 4 CPUs per GPU: four 1-CPU trials share a GPU
    ({"CPU": 4, "GPU": 1}, 2, 0.5),
    ({"CPU": 4, "GPU": 1}, 8, 1.0),      # a trial wider than a node still gets a whole GPU
    ({"CPU": 8}, 1, 0.0),                # no GPU: trials run on CPU
])
def test_auto_gpus_pack_trials_onto_gpus(monkeypatch, resources, cpus_per_trial, expected):
    monkeypatch.setattr(ray, "cluster_resources", lambda: resources)
    monkeypatch.setattr(cluster, "autoscaler_node_types", lambda: None)
    assert gpus_per_trial(cpus_per_trial) == expected


def test_auto_gpus_on_a_cluster_whose_gpu_nodes_start_on_demand(monkeypatch):
    # `ray up cluster.yaml`: a CPU-0 head, GPU workers from zero; trials must ask for a GPU share
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 0})
    monkeypatch.setattr(cluster, "autoscaler_node_types", lambda: [{"CPU": 8}, GPU_NODE])
    assert gpus_per_trial(1) == 0.25
    monkeypatch.setattr(cluster, "_embedded", {"temp_dir": "/tmp/x"})   # an embedded Ray: no
    assert gpus_per_trial(1) == 0.0


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


# --- resources the cluster cannot provide: Ray's view of the cluster replaced by fakes ---


@pytest.fixture
def fake_cluster(monkeypatch, tmp_path):
    """Alive nodes as the test says (a list, or a callable for nodes that join later), the
    autoscaler's requests recorded, no cluster config in the GCS and no `ray up` config."""
    from ray._private import state
    from ray.autoscaler import sdk

    view = {"nodes": [CPU_NODE], "requests": [], "types": None}

    def nodes():
        alive = view["nodes"]() if callable(view["nodes"]) else view["nodes"]
        return [{"Alive": True, "Resources": r} for r in alive] + \
            [{"Alive": False, "Resources": GPU_NODE}]          # a dead node counts for nothing

    monkeypatch.setattr(ray, "nodes", nodes)
    monkeypatch.setattr(sdk, "request_resources",
                        lambda bundles: view["requests"].append(bundles))
    monkeypatch.setattr(state.state, "get_cluster_config", lambda: view["types"])
    monkeypatch.setattr(cluster, "BOOTSTRAP_CONFIG", str(tmp_path / "ray_bootstrap_config.yaml"))
    monkeypatch.setattr(cluster, "RESOURCE_POLL_S", 0.0)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv(cluster.RESOURCE_WAIT_ENV, raising=False)
    return view


def node_groups(*groups):
    """A cluster config as the GCS holds it: (resources, max_count) per node group."""
    from ray.core.generated import autoscaler_pb2

    config = autoscaler_pb2.ClusterConfig()
    for resources, max_count in groups:
        group = config.node_group_configs.add()
        group.resources.update(resources)
        group.max_count = max_count
    return config


def test_an_embedded_ray_refuses_at_once(fake_cluster):
    with pytest.raises(ClusterError, match=r"^no node can run a trial of 1 CPU and 1 GPU \(this "
                                           r"machine has 4 CPU, 0 GPU\): lower resources.cpu"):
        check_resources(1, 1, None)
    assert fake_cluster["requests"] == []
    check_resources(4, "auto", None)                       # what the machine has passes


def test_a_cluster_whose_node_types_lack_it_refuses_at_once(fake_cluster):
    fake_cluster["types"] = node_groups((CPU_NODE, 8), ({"CPU": 8, "GPU": 1}, 0))  # (0: never)
    with pytest.raises(ClusterError) as error:
        check_resources(1, 0.5, "head:6379")
    message = str(error.value)
    assert "\n" not in message and "cluster at head:6379" in message
    assert "lower resources.cpu / resources.gpu" in message and "available_node_types" in message
    assert fake_cluster["requests"] == []                 # nothing was waited for


def test_a_cluster_whose_autoscaler_can_start_it_is_left_to_scale(fake_cluster):
    fake_cluster["types"] = node_groups((CPU_NODE, 8), (GPU_NODE, 4))
    check_resources(1, 0.25, "head:6379")                # no GPU node yet; one can start
    assert fake_cluster["requests"] == []


def test_the_ray_up_config_on_the_head_tells_the_node_types(fake_cluster, tmp_path):
    import yaml

    path = tmp_path / "ray_bootstrap_config.yaml"
    config = {"max_workers": 8, "head_node_type": "head", "available_node_types": {
        "head": {"resources": {"CPU": 0}, "max_workers": 0},
        "gpu_worker": {"resources": GPU_NODE, "min_workers": 0, "max_workers": 8}}}
    path.write_text(yaml.safe_dump(config))
    check_resources(1, 1, "auto")
    with pytest.raises(ClusterError, match="nor any node its autoscaler can start"):
        check_resources(1, 2, "auto")
    del config["available_node_types"]["gpu_worker"]["resources"]    # left to Ray: unknown
    path.write_text(yaml.safe_dump(config))
    assert cluster.autoscaler_node_types() is None


def test_unknown_node_types_wait_for_a_node_to_join(fake_cluster, monkeypatch):
    polls = []

    def joining():
        polls.append(1)
        return [CPU_NODE] + ([GPU_NODE] if len(polls) > 3 else [])

    fake_cluster["nodes"] = joining
    monkeypatch.setenv(cluster.RESOURCE_WAIT_ENV, "60")
    check_resources(2, 1, "head:6379")
    assert len(polls) == 4
    # the autoscaler was asked for such a node, and the request withdrawn once it came
    assert fake_cluster["requests"] == [[{"CPU": 2, "GPU": 1.0}], []]


def test_unknown_node_types_give_up_after_the_wait(fake_cluster, monkeypatch, capsys):
    monkeypatch.setenv(cluster.RESOURCE_WAIT_ENV, "0.2")
    with pytest.raises(ClusterError) as error:
        check_resources(1, 1, "head:6379")
    message = str(error.value)
    assert "\n" not in message and "none joined within 0.2 s" in message
    assert "lower resources.cpu / resources.gpu" in message and "LIFELAB_RESOURCE_WAIT_S" in message
    assert fake_cluster["requests"] == [[{"CPU": 1, "GPU": 1.0}], []]
    assert "waiting up to 0.2 s" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["soon", "-5", "inf"])
def test_a_bad_wait_is_one_clear_error(fake_cluster, monkeypatch, value):
    monkeypatch.setenv(cluster.RESOURCE_WAIT_ENV, value)
    with pytest.raises(ConfigError, match=f"LIFELAB_RESOURCE_WAIT_S='{value}' is not a number"):
        check_resources(1, 1, "head:6379")
