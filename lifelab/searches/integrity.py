"""Signatures of Tune's saved state, checked before a resume unpickles any of it.

Resuming a sweep unpickles what Tune saved at the top of `<sweep>/tune/` (tuner.pkl, the
experiment, searcher and callback states: cloudpickle, even in its .json files), so whoever can
write the sweep's storage could plant code there. The driver signs every such file it writes
with an HMAC-SHA256 keyed by a secret that never lives in the storage, and `lifelab resume`
refuses, before anything is unpickled, a file that is unsigned or differs from what was signed.

The signatures (`tune/lifelab-signatures`, JSON: file name -> recent HMACs) are written straight
to storage before Tune copies the state there from the driver's staging dir, so whatever version
of a file storage holds, even after a crash in the middle of a copy, is one already signed.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import stat
import sys
from pathlib import Path

import pyarrow.fs as pafs
from ray import tune

from lifelab.errors import LifelabError, StorageError
from lifelab.platform.store import OBJECT_STORES, join, resolve
from lifelab.searches.ray_internals import after_state_saves

KEY_ENV = "LIFELAB_STATE_KEY"
SIGNATURES = "lifelab-signatures"
TUNER_FILE = "tuner.pkl"
KEEP = 256              # recent versions of a file accepted: storage may lag saves behind
FORBIDDEN = "_dict_checkpoint.pkl"     # Tune unpickles it from a checkpoint; lifelab writes none
TRUST_COMMAND = "python -m lifelab.searches.integrity SWEEP_DIR"


class StateIntegrityError(LifelabError):
    """Tune's saved state of a sweep is not what this user's driver signed."""


def key_path() -> Path:
    config = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"),
                                                               ".config")
    return Path(config) / "lifelab" / "state.key"


def state_key() -> bytes:
    """LIFELAB_STATE_KEY, else the per-user key file, created (0600) on first use."""
    if os.environ.get(KEY_ENV):
        return os.environ[KEY_ENV].encode()
    path = key_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32) + "\n")
    except FileExistsError:
        pass
    except OSError as exc:
        raise StorageError(f"cannot create the state key {path} ({exc}): set {KEY_ENV} to a "
                           "secret of your own") from None
    if os.stat(path).st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise StateIntegrityError(f"the state key {path} is readable by others: "
                                  f"`chmod 600 {path}`")
    key = path.read_text().strip().encode()
    if not key:
        raise StateIntegrityError(f"the state key {path} is empty: delete it (a new one is made) "
                                  f"or set {KEY_ENV}")
    return key


def signature(key: bytes, name: str, content: bytes) -> str:
    """The file's name is signed too: a signed file cannot stand in for another."""
    return hmac.new(key, name.encode() + b"\0" + content, hashlib.sha256).hexdigest()


def is_state_file(name: str) -> bool:
    """What a restore may unpickle: Tune reads only the .json and .pkl files at the top."""
    return name.endswith((".json", ".pkl"))


class Signatures:
    """The signature file of one sweep's tune dir."""

    def __init__(self, tune_uri: str):
        self.fs, self.dir = resolve(tune_uri)
        self.path = join(self.dir, SIGNATURES)

    def read(self) -> dict[str, list[str]] | None:
        try:
            if self.fs.get_file_info(self.path).type == pafs.FileType.NotFound:
                return None
            with self.fs.open_input_stream(self.path) as f:
                data = json.loads(f.read().decode())
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            raise StateIntegrityError(f"cannot read {self.path} ({exc}): restore the sweep dir "
                                      "from a copy you trust") from None
        if not (isinstance(data, dict) and all(
                isinstance(v, list) and all(isinstance(s, str) for s in v)
                for v in data.values())):
            raise StateIntegrityError(f"{self.path} is not a signature file: restore the sweep "
                                      "dir from a copy you trust")
        return data

    def write(self, signed: dict[str, list[str]]) -> None:
        # an object store's PUT is atomic already; elsewhere write aside, then rename
        direct = self.fs.type_name in OBJECT_STORES
        tmp = self.path if direct else join(self.dir, f".tmp-{SIGNATURES}")
        with self.fs.open_output_stream(tmp) as out:
            out.write(json.dumps(signed, sort_keys=True).encode())
        if not direct:
            self.fs.move(tmp, self.path)

    def state_files(self) -> list[pafs.FileInfo]:
        selector = pafs.FileSelector(self.dir, allow_not_found=True)
        return [i for i in self.fs.get_file_info(selector)
                if i.type == pafs.FileType.File and is_state_file(i.base_name)]

    def read_file(self, path: str) -> bytes:
        with self.fs.open_input_stream(path) as f:
            return f.read()


def verify_state(sweep_uri: str, tune_dir: str = "tune") -> None:
    """Refuses, in one line and before anything is unpickled, a sweep whose Tune state holds a
    file this user's key did not sign, or a checkpoint Tune would unpickle."""
    try:
        _verify(sweep_uri, tune_dir)
    except OSError as exc:
        raise StorageError(f"cannot read the state Tune saved in {sweep_uri} ({exc}): check "
                           "the storage and resume again") from None


def _verify(sweep_uri: str, tune_dir: str) -> None:
    key, store = state_key(), Signatures(join(sweep_uri, tune_dir))
    signed = store.read()
    fix = (f"restore {sweep_uri} from a copy you trust, or, if you trust it as it is (e.g. it "
           f"was signed under another key: {KEY_ENV}), sign it with `{TRUST_COMMAND}`")
    for info in sorted(store.state_files(), key=lambda i: i.base_name):
        name = info.base_name
        if signed is None or name not in signed:
            why = "is not signed"
        elif signature(key, name, store.read_file(info.path)) not in signed[name]:
            why = "differs from what this driver's key signed"
        else:
            continue
        raise StateIntegrityError(f"Tune's state file {tune_dir}/{name} {why}, and resuming "
                                  f"would unpickle it (it could run code): {fix}")
    everything = pafs.FileSelector(store.dir, allow_not_found=True, recursive=True)
    planted = [i.path for i in store.fs.get_file_info(everything) if i.base_name == FORBIDDEN]
    if planted:
        raise StateIntegrityError(f"{planted[0]} is no checkpoint lifelab wrote, and Tune would "
                                  f"unpickle it: delete it and resume again")


def trust_state(sweep_uri: str, tune_dir: str = "tune") -> list[str]:
    """Sign every state file of a sweep as it is now (after you checked it) -> their names."""
    key, store = state_key(), Signatures(join(sweep_uri, tune_dir))
    signed = store.read() or {}
    names = []
    try:
        for info in store.state_files():
            digest = signature(key, info.base_name, store.read_file(info.path))
            signed[info.base_name] = [*signed.get(info.base_name, []), digest][-KEEP:]
            names.append(info.base_name)
        if not names:
            raise StorageError(f"{sweep_uri} holds no Tune state to sign: give a sweep dir "
                               "(<storage>/<name>, with a tune/ folder)")
        store.write(signed)
    except OSError as exc:
        raise StorageError(f"cannot sign the state of {sweep_uri} ({exc}): give a sweep dir "
                           "you can write") from None
    return sorted(names)


class StateSigner(tune.Callback):
    """Signs tuner.pkl when a new sweep starts, and each state file this driver stages, right
    after Tune writes it and before Tune copies it to storage."""

    def __init__(self, sweep_uri: str, tune_dir: str = "tune"):
        self.tune_uri = join(sweep_uri, tune_dir)
        self.key: bytes | None = None
        self.signed: dict[str, list[str]] = {}

    def __getstate__(self) -> dict:
        # Tune pickles callbacks into the storage: never the key
        return {**self.__dict__, "key": None, "signed": {}, "store": None}

    def setup(self, **info) -> None:
        self.key = state_key()
        self.store = Signatures(self.tune_uri)
        self.signed = self.store.read() or {}
        # a resume verified tuner.pkl before unpickling it; a new sweep just wrote it
        path = join(self.store.dir, TUNER_FILE)
        if TUNER_FILE not in self.signed and \
                self.store.fs.get_file_info(path).type == pafs.FileType.File:
            self._sign(TUNER_FILE, self.store.read_file(path))
            self.store.write(self.signed)
        after_state_saves()

    def state_saved(self, staging_dir: str, session: str) -> None:
        if self.key is None:
            return                                # unpickled from Tune's state: not ours
        changed = False
        for path in Path(staging_dir).iterdir():
            # only what this driver wrote: older sessions' files came down from storage
            if path.is_file() and session in path.name and is_state_file(path.name):
                changed |= self._sign(path.name, path.read_bytes())
        if changed:
            self.store.write(self.signed)

    def _sign(self, name: str, content: bytes) -> bool:
        digest = signature(self.key, name, content)
        known = self.signed.get(name, [])
        if digest in known:
            return False
        self.signed[name] = [*known, digest][-KEEP:]
        return True


def main(argv: list[str]) -> int:
    """`python -m lifelab.searches.integrity SWEEP_DIR`: trust a sweep's Tune state as it is."""
    if len(argv) != 1:
        print(f"usage: {TRUST_COMMAND}  (signs the Tune state of a sweep dir you trust with "
              "your key, so that `lifelab resume` accepts it)", file=sys.stderr)
        return 2
    try:
        names = trust_state(argv[0])
    except LifelabError as exc:
        print(f"lifelab: {exc}", file=sys.stderr)
        return 2
    print(f"signed {len(names)} state files of {argv[0]}: {', '.join(names)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
