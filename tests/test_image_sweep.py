"""Split CIFAR-100 with the reduced ResNet-18, end to end on files in CIFAR's own format: a
sweep, its report, and a trial's checkpoint continuing bit for bit."""

import pytest
import torch
from test_images import write_cifar

from lifelab.analysis.report import text_report
from lifelab.searches.launch import run_sweep
from lifelab.searches.spec import spec_from_dict


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    write_cifar(root, "cifar100", per_class=10, test_per_class=2)
    return str(root)


def stream(root: str) -> dict:
    return {"dataset": "cifar100", "data_root": root, "kind": "split", "tasks": 2,
            "classes_per_task": 5, "class_order": "seeded", "scenario": "class",
            "steps_per_task": 4, "validation": 0.2}


CONFIG = {"backbone": "resnet18", "nf": 4, "batch_size": 8, "optimizer": "sgd", "lr": 0.05,
          "steps_per_round": 2}


def test_a_split_cifar100_resnet_sweep_runs_and_reports(ray_session, short_tmp, cifar_root):
    spec = spec_from_dict({"name": "cifar", "learner": {"grid": ["finetune", "ewc"]},
                           "stream": stream(cifar_root), "config": CONFIG})
    sweep_uri, results = run_sweep(spec, storage=short_tmp, progress_s=0)
    assert len(results) == 2 and not any(r.error for r in results)
    report = text_report(sweep_uri)
    assert "finetune" in report and "ewc" in report and "val_acc_avg" in report


def test_a_resnet_trial_continues_bit_for_bit_from_its_checkpoint(ray_session, tmp_path,
                                                                   cifar_root,
                                                                   one_thread_after):
    from lifelab.trainables.trainable import LearnerTrainable

    config = {"learner": "finetune", "stream": stream(cifar_root), **CONFIG}
    straight = LearnerTrainable(config=config)
    for _ in range(4):
        straight.train()
    first = LearnerTrainable(config=config)
    for _ in range(2):
        first.train()
    first.save_checkpoint(str(tmp_path))
    resumed = LearnerTrainable(config=config)
    resumed.load_checkpoint(str(tmp_path))
    for _ in range(2):
        resumed.learner.step_round()                 # rounds 3 and 4, augmentation included
    for a, b in zip(straight.learner.model.state_dict().values(),
                    resumed.learner.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
