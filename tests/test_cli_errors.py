"""User errors at the front door: one `lifelab: error:` line, exit 2, no traceback, Ray never
started, nothing already on disk touched."""

import os
import subprocess
import sys

import pytest
import ray

import lifelab.searches.launch as launch
from lifelab.cli import main
from lifelab.errors import StorageError


class RayStarted(BaseException):
    """Not a LifelabError (nor even an Exception): main() cannot swallow it."""


@pytest.fixture(autouse=True)
def no_ray(monkeypatch, tmp_path):
    """Every path here must fail during validation or storage checks, before Ray starts."""
    def started(*args, **kwargs):
        raise RayStarted("a user error reached Ray: validate before connecting")

    monkeypatch.setattr(launch, "connect", started)
    monkeypatch.setattr(launch, "_tuner", started)       # even if a Ray is already up
    monkeypatch.setattr(ray, "init", started)
    monkeypatch.delenv("LIFELAB_STORAGE", raising=False)
    monkeypatch.chdir(tmp_path)                          # the default ./lifelab-sweeps lands here


def user_error(capsys, *argv: str) -> str:
    """Run the CLI in-process; it must exit 2 with exactly one `lifelab: error:` line."""
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert code == 2
    assert "Traceback" not in out + err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("lifelab: error: ")
    return lines[0]


def snapshot(root) -> dict:
    """Every file under root with its bytes (and every directory), to compare before/after."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            found[os.path.join(dirpath, d)] = None
        for f in filenames:
            path = os.path.join(dirpath, f)
            with open(path, "rb") as fh:
                found[path] = fh.read()
    return found


def test_unknown_preset(capsys, tmp_path):
    line = user_error(capsys, "sweep", "no-such-preset")
    assert "'no-such-preset' is neither a preset nor a spec file" in line
    assert "demo" in line                                # the fix: a preset that exists
    assert not (tmp_path / "lifelab-sweeps").exists()


def test_missing_yaml(capsys, tmp_path):
    path = tmp_path / "missing.yaml"
    line = user_error(capsys, "sweep", str(path))
    assert str(path) in line and "does not exist" in line
    assert not path.exists() and not (tmp_path / "lifelab-sweeps").exists()


def test_malformed_yaml(capsys, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("learner: {choice: [finetune, joint\n")
    line = user_error(capsys, "sweep", str(path))
    assert "is not valid YAML" in line and "fix the syntax" in line
    assert path.read_text() == "learner: {choice: [finetune, joint\n"


def test_yaml_that_is_a_list(capsys, tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- finetune\n")
    assert "must be a YAML mapping" in user_error(capsys, "sweep", str(path))


def test_unknown_learner_in_yaml(capsys, tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text("name: x\nlearner: {choice: [finetune, nope]}\n")
    line = user_error(capsys, "sweep", str(path), "--storage", str(tmp_path / "st"))
    assert "unknown learner 'nope'" in line
    assert all(word in line for word in ("use one of", "finetune", "joint"))
    assert not (tmp_path / "st").exists()


def test_wrong_type_in_yaml(capsys, tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text("learner: finetune\nconfig: {batch_size: 1.5}\n")
    line = user_error(capsys, "sweep", str(path), "--storage", str(tmp_path / "st"))
    assert "config.batch_size" in line and "must be an integer" in line
    assert not (tmp_path / "st").exists()


@pytest.mark.parametrize("samples", ["-1", "0"])
def test_non_positive_samples(capsys, tmp_path, samples):
    line = user_error(capsys, "sweep", "demo", "--samples", samples,
                      "--storage", str(tmp_path / "st"))
    assert "search.samples" in line and f"got {samples}" in line
    assert not (tmp_path / "st").exists()


def test_bad_name_override(capsys, tmp_path):
    line = user_error(capsys, "sweep", "demo", "--name", "a/b", "--storage", str(tmp_path / "st"))
    assert "name 'a/b'" in line
    assert not (tmp_path / "st").exists()


@pytest.mark.parametrize("below", ["", "sub"])
def test_storage_inside_a_regular_file(capsys, tmp_path, below):
    blocker = tmp_path / "blocker"
    blocker.write_bytes(b"precious bytes\n")
    storage = os.path.join(str(blocker), below) if below else str(blocker)
    line = user_error(capsys, "sweep", "demo", "--storage", storage)
    assert "cannot write to storage" in line and "choose a writable --storage" in line
    assert blocker.read_bytes() == b"precious bytes\n"
    assert sorted(os.listdir(tmp_path)) == ["blocker"]


@pytest.mark.parametrize("command", ["resume", "report"])
def test_sweep_dir_that_does_not_exist(capsys, tmp_path, command):
    missing = tmp_path / "nowhere" / "demo"
    line = user_error(capsys, command, str(missing))
    assert f"sweep dir {missing} does not exist" in line
    assert "lifelab sweep" in line                       # the fix: where sweep dirs come from
    assert not (tmp_path / "nowhere").exists()


@pytest.mark.parametrize("spec_text", [None, "just some text\n", "- a list\n"],
                         ids=["no-spec", "spec-not-mapping", "spec-a-list"])
@pytest.mark.parametrize("command", ["resume", "report"])
def test_dir_that_is_not_a_sweep(capsys, tmp_path, command, spec_text):
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine\n")
    if spec_text is not None:
        (folder / "spec.yaml").write_text(spec_text)
    before = snapshot(tmp_path)
    line = user_error(capsys, command, str(folder))
    assert f"{folder} is not a lifelab sweep" in line and "spec.yaml" in line
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("command", ["resume", "report"])
def test_a_regular_file_is_not_a_sweep(capsys, tmp_path, command):
    path = tmp_path / "file"
    path.write_bytes(b"data")
    assert "is not a lifelab sweep" in user_error(capsys, command, str(path))
    assert path.read_bytes() == b"data"


def test_resume_of_a_sweep_whose_spec_is_invalid(capsys, tmp_path):
    folder = tmp_path / "old"
    folder.mkdir()
    (folder / "spec.yaml").write_text("name: old\nlearner: gone\n")
    before = snapshot(tmp_path)
    assert "unknown learner 'gone'" in user_error(capsys, "resume", str(folder))
    assert snapshot(tmp_path) == before


def test_sweep_under_an_existing_name_is_refused(capsys, tmp_path):
    storage = tmp_path / "st"
    existing = storage / "demo"
    existing.mkdir(parents=True)
    (existing / "spec.yaml").write_bytes(b"name: demo\n# the spec of a running sweep\n")
    before = snapshot(tmp_path)
    line = user_error(capsys, "sweep", "demo", "--storage", str(storage))
    assert "sweep 'demo' already exists" in line
    assert f"lifelab resume {existing}" in line and "--name" in line
    assert (existing / "spec.yaml").read_bytes() == b"name: demo\n# the spec of a running sweep\n"
    assert snapshot(tmp_path) == before                  # no tune/, no spec.yaml.tmp


def test_existing_name_is_refused_by_name_override_too(capsys, tmp_path):
    storage = tmp_path / "st"
    (storage / "mine" / "tune").mkdir(parents=True)     # a Tune experiment, spec.yaml lost
    before = snapshot(tmp_path)
    line = user_error(capsys, "sweep", "demo", "--name", "mine", "--storage", str(storage))
    assert "sweep 'mine' already exists" in line and "lifelab resume" in line
    assert snapshot(tmp_path) == before


def test_a_multi_line_message_is_printed_on_one_line(capsys, monkeypatch):
    def fails(*args, **kwargs):
        raise StorageError("cannot write to storage s3://b/x (AWS Error\nACCESS_DENIED): fix it")

    monkeypatch.setattr("lifelab.searches.spec.load_spec", fails)
    line = user_error(capsys, "sweep", "demo")
    assert line == ("lifelab: error: cannot write to storage s3://b/x (AWS Error ACCESS_DENIED): "
                    "fix it")


def test_list_shows_learners_with_descriptions_and_presets(capsys):
    assert main(["list"]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    lines = out.splitlines()
    learners = dict(line.strip().split(None, 1) for line in
                    lines[lines.index("learners:") + 1:] if line.startswith("  "))
    assert learners["finetune"].startswith("Plain sequential training")
    assert all(learners.values())                     # every learner describes itself
    presets = next(line for line in lines if line.startswith("presets:"))
    assert "demo" in {name.strip() for name in presets.split(":")[1].split(",")}


def test_list_of_one_learner_shows_its_params_and_metrics(capsys):
    from lifelab.learners.regularized import EWC

    assert main(["list", "ewc"]) == 0
    out = capsys.readouterr().out
    for key, param in EWC.params.items():
        row = next(line for line in out.splitlines() if line.split()[:1] == [key])
        assert repr(param.default) in row and param.doc in row
    assert "metrics: " + ", ".join(EWC.metrics) in out


def test_console_entry_in_a_subprocess(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("LIFELAB_STORAGE", "RAY_ADDRESS")}
    proc = subprocess.run([sys.executable, "-m", "lifelab", "sweep", "no-such-preset"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("lifelab: error: 'no-such-preset' is neither a preset")
    assert proc.stdout == ""
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("argv", [["sweep", "demo", "--samples", "abc"], [], ["frobnicate"],
                                  ["sweep", "demo", "--progress", "-5"],
                                  ["sweep", "demo", "--progress", "nan"]])
def test_usage_mistakes_are_one_line_with_exit_2(capsys, argv):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    _, err = capsys.readouterr()
    assert exit_.value.code == 2
    assert len(err.splitlines()) == 1 and err.startswith("lifelab: error: ")
    assert "--help" in err
    if "--progress" in argv:
        assert "must be seconds >= 0" in err
