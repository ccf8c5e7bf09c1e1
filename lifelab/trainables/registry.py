"""Learner names -> classes. Imported lazily so that listing names needs no torch."""

from __future__ import annotations

import importlib

from lifelab.errors import ConfigError

LEARNERS: dict[str, str] = {
    "finetune": "lifelab.learners.baselines:Finetune",
    "joint": "lifelab.learners.baselines:Joint",
    "hnet": "lifelab.learners.hnet:HNet",
    "lifelong_lstm": "lifelab.learners.lifelong_lstm:LifelongLSTM",
    "l2": "lifelab.learners.regularized:L2",
    "ewc": "lifelab.learners.regularized:EWC",
    "online_ewc": "lifelab.learners.regularized:OnlineEWC",
    "mas": "lifelab.learners.regularized:MAS",
    "scp": "lifelab.learners.regularized:SCP",
    "si": "lifelab.learners.pathint:SI",
    "rwalk": "lifelab.learners.pathint:RWalk",
    "teacher": "lifelab.learners.teacher:Teacher",
    "backprop": "lifelab.learners.credit:Backprop",
    "feedback_alignment": "lifelab.learners.credit:FeedbackAlignment",
    "dfa": "lifelab.learners.credit:DFA",
    "synthetic_gradients": "lifelab.learners.credit:SyntheticGradients",
    "forward_forward": "lifelab.learners.credit:ForwardForward",
    "target_prop": "lifelab.learners.credit:TargetProp",
    "reversible": "lifelab.learners.reversible:Reversible",
}


def learner_names() -> list[str]:
    return sorted(LEARNERS)


def learner_class(name: str) -> type:
    if name not in LEARNERS:
        raise ConfigError(f"unknown learner '{name}': use one of {', '.join(learner_names())} "
                          "(`lifelab list` shows them)")
    module, attr = LEARNERS[name].split(":")
    return getattr(importlib.import_module(module), attr)
