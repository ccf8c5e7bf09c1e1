"""Teacher networks: learned optimizers that replace gradient descent.

A *teacher* is one small network applied to every weight of a *student* independently
(coordinate-wise, shared by all weights, so it works for any student shape). It reads each
weight's local state and writes its update. All weights of a student are one batch of feature
rows; the student runs functionally on one flat weight vector, so the meta-gradient can flow back
through an unroll of student steps. The learner is `Teacher`; each concern has its module, whose
docstring is its reference:

  students    the student family: MLPs of drawn depth and widths, run functionally; scoring
  features    the feature sets (gradient | gradient_free) and their per-tensor normalisation
  network     TeacherNet (mlp | lstm), the update step_size * d * exp(m), resizing under PBT
  estimators  meta-training: windows, the meta-objective, BPTT and ES, self-application
  baselines   the meta-test: validation and test students, SGD and Adam tuned per student and
              horizon
  learner     the Teacher learner: config, meta-training rounds, meta-test, state, adapt

In short: draw a student, unroll `unroll_steps` steps with the teacher, cut into windows of
`truncation` steps; each window is one meta-step, whose meta-gradient (truncated BPTT or ES of the
mean log(loss_t / loss_0)) is scaled to unit norm and applied by Adam at `meta_lr`. The update's
direction is centred per tensor, and the weight feature keeps its graph in the meta-gradient:
without these, meta-training found updates that shift whole layers or grow single weights
without bound, and short meta-trainings left teachers worse than they started on some seeds.
Every `eval_every` rounds the teacher trains held-out students, compared with tuned SGD and Adam
on the same initial weights and batches: validation students (reported as `val_<metric>`, what
searches select on, scored on training images no student trains on) and test students (reported
as `<metric>`, scored on the test split, never used for a decision). Validation, test and
meta-training students never share a seed (baselines module docstring).

Config keys (default):
  teacher_kind          mlp        mlp | lstm
  teacher_hidden        [32]       hidden sizes of the teacher (mutable under PBT via adapt)
  features              gradient   gradient | gradient_free
  step_size             0.01       scale of every update (step_size * d * exp(m))
  meta_gradient         bptt       bptt | es
  meta_objective        log_loss   log_loss | error (error needs es)
  meta_lr               0.001      Adam learning rate of the teacher
  meta_optimizer        adam       adam | self (experimental: the teacher optimizes itself)
  unroll_steps          100        student steps before a new student is drawn
  truncation            10         student steps per meta-step (>= 2)
  es_pairs, es_sigma    4, 0.01    antithetic pairs and perturbation std (es)
  meta_steps            2000       meta-training budget; `done` after it
  meta_steps_per_round  20         meta-steps per round
  student_depth         [1, 2]     hidden layers of meta-training students, [low, high]
  student_width         [20, 50]   width of each of their hidden layers, [low, high]
  student_activation    sigmoid    sigmoid | relu | tanh (meta-training and meta-test)
  student_batch         128        samples per student step
  eval_hidden           [64]       held-out architecture of meta-test students
  eval_dataset          ""         meta-test dataset ("": the meta-training dataset)
  eval_students         2          test students per meta-test
  val_students          2          validation students per meta-test
  eval_steps            100        N: meta-test horizon
  eval_long             false      also measure at 10N
  eval_samples          1000       training images the meta-test loss is measured on
  eval_every            1          rounds between meta-tests
The stream names the meta-training dataset only: `stream.dataset`, `stream.seed` (the held-out
students and validation images), `stream.validation` (0.1: the fraction of each class's training
images of the meta-test dataset that no student trains on, on which validation students are
scored; 0: no validation students), `stream.data_root`, `stream.download`; its task keys mean
nothing here and are refused.

Metrics (losses are geometric means over held-out students, accuracies arithmetic means; every
meta-test metric on the test students as named, on the validation students as val_<name>):
  meta_loss            mean meta-objective of the round's meta-steps
  train_loss           mean student training loss over the round's student steps
  meta_steps           meta-steps done so far
  students             meta-training students drawn so far
  loss_teacher         meta-test loss after N steps with the teacher
  loss_adam, loss_sgd  the same with tuned Adam / tuned SGD
  acc_teacher, acc_adam, acc_sgd   meta-test accuracy after N steps
  loss_ratio_adam      loss_teacher / loss_adam at N (the PBT objective, mode min; < 1: better)
  loss_ratio_sgd       loss_teacher / loss_sgd at N
  loss_ratio_adam_2n   the ratio at 2N (beyond the meta-training horizon when unroll_steps = N)
  loss_ratio_adam_10n  the ratio at 10N (with eval_long)
The meta-test metrics are those of the last meta-test (reported every round once there is one).
A meta-learner has no accuracy matrix: `rows` stays empty.
"""

from lifelab.learners.teacher.baselines import (
    ADAM_GRID,
    HELDOUT_SEED,
    SGD_GRID,
    summarize,
    tuned_baseline,
)
from lifelab.learners.teacher.features import (
    FEATURE_SETS,
    activity_features,
    feedback_matrices,
    gradient_features,
)
from lifelab.learners.teacher.learner import Teacher
from lifelab.learners.teacher.network import TeacherNet
from lifelab.learners.teacher.students import (
    StudentNet,
    StudentRun,
    StudentTask,
    as_rows,
    score,
)

__all__ = [
    "ADAM_GRID", "FEATURE_SETS", "HELDOUT_SEED", "SGD_GRID", "StudentNet", "StudentRun",
    "StudentTask", "Teacher", "TeacherNet", "activity_features", "as_rows", "feedback_matrices",
    "gradient_features", "score", "summarize", "tuned_baseline",
]
