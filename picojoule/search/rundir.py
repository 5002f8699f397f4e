"""The run directory: the config copy, the check that it suits a new or resumed run, and a lock that keeps
two processes from driving one run at once (a killed process's stale lock is taken over)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml

from picojoule.errors import PicojouleError
from picojoule.search.config import RESUMABLE_FIELDS, SearchSettings, config_from_dict
from picojoule.search.journal import JOURNAL
from picojoule.yamlfile import read_yaml

CONFIG_FILE = "config.yaml"
LOCK_FILE = "run.lock"


def _require_dir(run_dir: Path, field: str) -> None:
    if run_dir.exists() and not run_dir.is_dir():
        raise PicojouleError(f"{run_dir}: field '{field}': expected a directory, found a file")


def saved_config_path(run_dir: Path) -> Path:
    """The config of the run in ``run_dir``; an error if there is no run to resume."""
    _require_dir(run_dir, "resume")
    if not (run_dir / JOURNAL).is_file() or not (run_dir / CONFIG_FILE).is_file():
        raise PicojouleError(f"{run_dir}: nothing to resume (no {JOURNAL} and {CONFIG_FILE})")
    return run_dir / CONFIG_FILE


def check_run_dir(run_dir: Path, config: SearchSettings, resume: bool) -> None:
    """A new run needs a directory without a journal; a resumed one the same config (but the resumable fields).
    A SearchSettings (the Python API's run, whose model is an object) is compared on the settings alone."""
    _require_dir(run_dir, "resume" if resume else "out")
    if not resume:
        if (run_dir / JOURNAL).exists():
            raise PicojouleError(f"{run_dir}: a search already ran here; resume it or choose another directory")
        return
    path = saved_config_path(run_dir)
    fields = type(config).model_fields
    raw = {k: v for k, v in (read_yaml(path, "search config") or {}).items() if k in fields}
    saved = config_from_dict(raw, str(path), type(config)).dump()
    new = config.dump()
    changed = [k for k in new if k not in RESUMABLE_FIELDS and new[k] != saved.get(k)]
    if changed:
        k = changed[0]
        raise PicojouleError(f"{path}: field '{k}': the run was started with {saved.get(k)!r}, not {new[k]!r}; "
                             f"only {', '.join(RESUMABLE_FIELDS)} may change on resume")


def write_config(run_dir: Path, config: SearchSettings) -> Path:
    path = run_dir / CONFIG_FILE
    path.write_text(yaml.safe_dump(config.dump(), sort_keys=False, allow_unicode=True))
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold ``run_dir/run.lock`` (holding this process's id) while the block runs."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # a file in the way, or no permission
        raise PicojouleError(f"{run_dir}: field 'out': cannot create the run directory ({e.strerror})") from None
    path, mine = run_dir / LOCK_FILE, run_dir / f"{LOCK_FILE}.{os.getpid()}"
    mine.write_text(str(os.getpid()))
    try:
        for _ in range(2):
            try:
                os.link(mine, path)  # atomic, and the lock is never seen without its owner's id
                break
            except FileExistsError:
                try:
                    pid = int(path.read_text())
                except (OSError, ValueError):
                    pid = 0
                if pid and _alive(pid):
                    raise PicojouleError(f"{run_dir}: another search (process {pid}) is running this run") from None
                path.unlink(missing_ok=True)  # stale: its process is gone
        else:
            raise PicojouleError(f"{run_dir}: cannot take {LOCK_FILE}")
    finally:
        mine.unlink(missing_ok=True)
    try:
        yield
    finally:
        path.unlink(missing_ok=True)
