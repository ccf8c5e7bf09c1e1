"""Stand-ins for Ray Tune objects that scheduler tests hand to lifelab's PBT hooks."""


class FakeController:
    """What PBT reads of Tune's controller: its trials."""

    search_alg = None

    def __init__(self, trials):
        self.trials = trials

    def get_trials(self):
        return self.trials

    def get_live_trials(self):
        return set(self.trials)
