"""README.md's examples name only files that ship in the repository or that an earlier README command makes."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
#: a token names a file when it has a directory part or one of these suffixes
SUFFIXES = (".yaml", ".yml", ".json", ".onnx", ".npz", ".th", ".pt", ".png", ".py", ".log", ".md", ".csv")
#: the options (and redirections) whose value a command writes
OUTPUTS = ("--out", "--plot", ">", "venv")


def commands() -> list[list[str]]:
    """Every command of the fenced bash blocks, in order, as shell words (comments, [ ] and | dropped)."""
    found = []
    for block in re.findall(r"```bash\n(.*?)```", README, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line.replace("[", " ").replace("]", " ").replace("|", " "), comments=True)
            cmd: list[str] = []
            for word in words + ["&&"]:
                if word == "&&":
                    found.append(cmd) if cmd else None
                    cmd = []
                else:
                    cmd.append(word)
    return found


def _is_path(word: str) -> bool:
    return not word.startswith("-") and ("/" in word or word.endswith(SUFFIXES)) and " " not in word


def test_every_file_a_readme_example_names_exists_or_is_made_earlier():
    made: list[str] = []
    missing = []
    for cmd in commands():
        outputs = {cmd[i + 1] for i, word in enumerate(cmd[:-1]) if word in OUTPUTS}
        if cmd[0] == "python" and cmd[1] == "-c":  # a one-liner: the files it writes are its quoted literals
            outputs |= set(re.findall(r"'([^']+\.\w+)'", cmd[2]))
        for word in cmd[1:]:
            if not _is_path(word) or word in outputs:
                continue
            path = word.rstrip("/")
            if path.startswith("../shared/data"):  # the reference data beside the repository (see conftest.py)
                continue
            if not ((ROOT / path).exists() or any(path == m or path.startswith(m + "/") for m in made)):
                missing.append(f"{path} (in: {' '.join(cmd)})")
        made += [o.rstrip("/") for o in outputs]
    assert not missing, "README examples name files that neither ship nor are made earlier:\n" + "\n".join(missing)


def test_quick_start_is_two_lines_ending_with_the_ci_test_command():
    block = re.search(r"## Quick start\n.*?```bash\n(.*?)```", README, re.S).group(1)
    setup, tests = block.strip().splitlines()
    assert "pip install torch==2.13.0 && pip install -e ." in setup and setup.endswith("picojoule search")
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert tests.endswith(ci) and ci == "python -m pytest -q"
    assert f"```bash\n{ci}\n```" in README  # the Test section gives the same command
