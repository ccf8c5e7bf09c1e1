"""An example of a researcher's own lifelab learner (see docs/writing-a-learner.md)."""
