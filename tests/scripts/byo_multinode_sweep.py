"""`lifelab sweep` of a spec naming a learner by module path, whose package is shipped by the
spec's `code` to a 2-node Ray cluster on this machine. Run by tests/test_byo_learner_sweeps.py in
its own process and working directory, where neither the driver nor the workers could import the
package without `code`."""

import sys

import ray
from ray.cluster_utils import Cluster

from lifelab.cli import main

spec_path, storage = sys.argv[1], sys.argv[2]
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
for _ in range(2):
    cluster.add_node(num_cpus=1)
code = main(["sweep", spec_path, "--storage", storage, "--address", cluster.address,
             "--progress", "0"])
ray.shutdown()
cluster.shutdown()
sys.exit(code)
