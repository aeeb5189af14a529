"""run.json records the git state of the user's own project, not only the toolbox's."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.conftest import TINY
from toolbox.records.run_record import project_git_states

TOOLBOX_CODE = Path(__file__).resolve().parents[1] / "toolbox"


def make_repo(path: Path) -> str:
    """A git repository at ``path`` with one commit; returns the commit's hash."""
    path.mkdir(parents=True)
    env = ["-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run(["git", "init", "-q", str(path)], check=True)
    (path / "models.py").write_text("# the user's models\n")
    subprocess.run(["git", "-C", str(path), "add", "."], check=True)
    subprocess.run(["git", "-C", str(path), *env, "commit", "-qm", "first"], check=True)
    head = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True)
    return head.stdout.decode().strip()


def test_a_run_records_the_project_it_was_started_from(train, tmp_path, monkeypatch):
    project = tmp_path / "project"
    commit = make_repo(project)
    (project / "models.py").write_text("# changed, not committed\n")
    monkeypatch.chdir(project / ".")
    assert train(*TINY, "--run-name", "r", output_dir=tmp_path / "outputs") == 0
    record = json.loads((tmp_path / "outputs" / "r" / "run.json").read_text())
    states = record["sessions"][0]["project_git"]
    assert list(states) == [str(project.resolve())]
    assert states[str(project.resolve())]["commit"] == commit
    assert states[str(project.resolve())]["dirty"] is True


def test_a_scripts_own_repository_is_recorded_beside_the_working_directorys(tmp_path, monkeypatch):
    here, scripts = tmp_path / "here", tmp_path / "scripts"
    make_repo(here)
    script_commit = make_repo(scripts)
    monkeypatch.chdir(here)
    states = project_git_states(TOOLBOX_CODE, [str(scripts / "train_mine.py"), "--epochs", "1"])
    assert set(states) == {str(here.resolve()), str(scripts.resolve())}
    assert states[str(scripts.resolve())]["commit"] == script_commit
    assert states[str(scripts.resolve())]["dirty"] is False


def test_outside_any_repository_nothing_more_is_recorded(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    assert project_git_states(TOOLBOX_CODE, ["train.py"]) == {}
