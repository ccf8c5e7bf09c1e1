"""`lifelab resume` unpickles nothing of Tune's state that this user's driver did not sign: a
planted or modified state file is refused in one line before any of it is loaded, an untouched
sweep resumes."""

import json
import pickle
import shutil
from pathlib import Path

import pytest

from lifelab.errors import LifelabError
from lifelab.searches import integrity
from lifelab.searches.integrity import SIGNATURES, StateIntegrityError, verify_state
from lifelab.searches.launch import resume_sweep, run_sweep
from lifelab.searches.spec import spec_from_dict

SPEC = {"name": "signed", "learner": "finetune", "stream": {"tasks": 1, "steps_per_task": 20},
        "config": {"hidden": [8], "steps_per_round": 10}, "search": {"scheduler": "fifo"},
        "stop": {"rounds": 2}, "loggers": []}


class Payload:
    """Unpickling it creates the marker file: proof that something was unpickled."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


@pytest.fixture(autouse=True)
def key(monkeypatch):
    monkeypatch.setenv(integrity.KEY_ENV, "the key of this test")


@pytest.fixture(scope="module")
def finished(ray_session, tmp_path_factory):
    """A finished sweep of 1 trial x 2 rounds (never touched by the tests: they copy it)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(integrity.KEY_ENV, "the key of this test")
        storage = tmp_path_factory.mktemp("storage")
        sweep_uri, results = run_sweep(spec_from_dict(SPEC), storage=str(storage), progress_s=0)
    assert len(results) == 1 and not results[0].error
    return Path(sweep_uri)


def copy(finished: Path, tmp_path) -> Path:
    sweep = tmp_path / "copy" / finished.name
    shutil.copytree(finished, sweep, ignore=shutil.ignore_patterns("lease.json"))
    return sweep


def state_files(sweep: Path) -> list[str]:
    return sorted(p.name for p in (sweep / "tune").iterdir() if p.suffix in (".json", ".pkl"))


def test_every_state_file_the_driver_left_is_signed(finished):
    names = state_files(finished)
    assert "tuner.pkl" in names and any(n.startswith("experiment_state-") for n in names)
    signed = json.loads((finished / "tune" / SIGNATURES).read_text())
    assert set(names) <= set(signed)
    verify_state(str(finished))


def test_an_untouched_sweep_resumes(finished, tmp_path):
    sweep = copy(finished, tmp_path)
    uri, results = resume_sweep(str(sweep), progress_s=0)
    assert len(results) == 1 and not results[0].error
    assert results[0].metrics["training_iteration"] == 2
    verify_state(str(sweep))            # and what the resume wrote is signed too
    assert len(state_files(sweep)) > len(state_files(finished))


def refused(sweep: Path, match: str) -> str:
    with pytest.raises(StateIntegrityError, match=match) as caught:
        resume_sweep(str(sweep), progress_s=0)
    message = str(caught.value)
    assert isinstance(caught.value, LifelabError) and "\n" not in message   # CLI: one line, 2
    return message


def test_a_planted_tuner_pkl_is_refused_before_it_is_unpickled(finished, tmp_path):
    sweep = copy(finished, tmp_path)
    marker = tmp_path / "payload-ran"
    (sweep / "tune" / "tuner.pkl").write_bytes(pickle.dumps(Payload(marker)))
    message = refused(sweep, r"tune/tuner\.pkl differs from what this driver's key signed")
    assert "restore" in message and "python -m lifelab.searches.integrity" in message
    assert not marker.exists()
    assert not (sweep / "results" / "metrics").exists() or \
        len(list((sweep / "results" / "metrics").glob("part-*"))) == \
        len(list((finished / "results" / "metrics").glob("part-*")))     # no trial ran


def test_a_modified_experiment_state_is_refused(finished, tmp_path):
    sweep = copy(finished, tmp_path)
    state = next((sweep / "tune").glob("experiment_state-*.json"))
    data = json.loads(state.read_text())
    data["stats"]["planted"] = True                  # still valid JSON, one key more
    state.write_text(json.dumps(data))
    refused(sweep, rf"tune/{state.name} differs")


def test_an_added_pickle_and_a_missing_signature_file_are_refused(finished, tmp_path):
    sweep = copy(finished, tmp_path)
    marker = tmp_path / "payload-ran"
    (sweep / "tune" / "searcher-state-2099-01-01_00-00-00.pkl").write_bytes(
        pickle.dumps(Payload(marker)))
    refused(sweep, r"searcher-state-2099-01-01_00-00-00\.pkl is not signed")
    (sweep / "tune" / SIGNATURES).unlink()
    refused(sweep, r"tune/\S+ is not signed")
    assert not marker.exists()


def test_a_dict_checkpoint_tune_would_unpickle_is_refused(finished, tmp_path):
    sweep = copy(finished, tmp_path)
    trial_dir = next(p for p in (sweep / "tune").iterdir() if p.is_dir())
    (trial_dir / "checkpoint_000009").mkdir()
    (trial_dir / "checkpoint_000009" / "_dict_checkpoint.pkl").write_bytes(b"x")
    with pytest.raises(StateIntegrityError, match="_dict_checkpoint.pkl is no checkpoint"):
        verify_state(str(sweep))


def test_another_key_is_refused_until_the_user_trusts_the_sweep(finished, tmp_path,
                                                                 monkeypatch, capsys):
    sweep = copy(finished, tmp_path)
    monkeypatch.setenv(integrity.KEY_ENV, "another user's key")
    with pytest.raises(StateIntegrityError, match="differs from what this driver's key signed"):
        verify_state(str(sweep))
    assert integrity.main([str(sweep)]) == 0
    assert "signed" in capsys.readouterr().out
    verify_state(str(sweep))


def test_the_key_file_is_made_once_readable_only_by_its_user(tmp_path, monkeypatch):
    monkeypatch.delenv(integrity.KEY_ENV)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    key = integrity.state_key()
    path = tmp_path / "lifelab" / "state.key"
    assert path.stat().st_mode & 0o777 == 0o600 and len(key) == 64
    assert integrity.state_key() == key
    path.chmod(0o644)
    with pytest.raises(StateIntegrityError, match="chmod 600"):
        integrity.state_key()


def test_signatures_on_object_storage(s3):
    fs, _ = s3
    uri = "s3://lifelab-test/integrity/sw"
    for name, content in (("tuner.pkl", b"tuner"), ("experiment_state-x.json", b"{}")):
        with fs.open_output_stream(f"lifelab-test/integrity/sw/tune/{name}") as out:
            out.write(content)
    with pytest.raises(StateIntegrityError, match="tune/experiment_state-x.json is not signed"):
        verify_state(uri)
    assert integrity.trust_state(uri) == ["experiment_state-x.json", "tuner.pkl"]
    verify_state(uri)
    with fs.open_output_stream("lifelab-test/integrity/sw/tune/tuner.pkl") as out:
        out.write(b"planted")
    with pytest.raises(StateIntegrityError, match="tune/tuner.pkl differs"):
        verify_state(uri)


def test_a_staged_save_is_signed_in_storage_before_tune_copies_it(tmp_path):
    from lifelab.searches.integrity import StateSigner

    sweep, staging = tmp_path / "sw", tmp_path / "staging"
    (sweep / "tune").mkdir(parents=True)
    staging.mkdir()
    (sweep / "tune" / "tuner.pkl").write_bytes(b"tuner")
    signer = StateSigner(str(sweep))
    signer.setup()                                   # a new sweep: signs its tuner.pkl
    for name in ("experiment_state-S2.json", "searcher-state-S2.pkl",
                 "experiment_state-S1.json"):        # S1: an older session's, synced down
        (staging / name).write_bytes(name.encode())
    signer.state_saved(str(staging), "S2")
    signed = json.loads((sweep / "tune" / SIGNATURES).read_text())
    assert set(signed) == {"tuner.pkl", "experiment_state-S2.json", "searcher-state-S2.pkl"}
    for name in ("experiment_state-S2.json", "searcher-state-S2.pkl"):   # as Tune's sync does
        shutil.copy(staging / name, sweep / "tune" / name)
    verify_state(str(sweep))
    assert pickle.loads(pickle.dumps(signer)).key is None      # Tune pickles its callbacks
