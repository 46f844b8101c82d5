"""A stand-in for the Hugging Face Hub at the `HfApi` boundary, for tests that run offline.

Repositories are folders; every upload is also laid out as the Hub cache (`models--owner--name/snapshots/<sha>`)
so that `from_pretrained("owner/name", cache_dir=hub.cache_dir)` loads what was pushed, offline. Everything not
patched here still meets `HF_HUB_OFFLINE=1` and fails loudly.
"""

import hashlib
import os
import shutil
from pathlib import Path

import huggingface_hub
from huggingface_hub import CommitInfo, HfApi, ModelCard, ModelCardData, RepoCard, RepoUrl
from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError


class FakeHub:
    def __init__(self, root: Path, user: str = "tester"):
        self.repos_dir, self.cache_dir, self.user = root / "repos", root / "cache", user
        self.commits: list[tuple[str, str]] = []  # (repo_id, commit message)
        self.validated: list[dict] = []  # metadata of every card validated

    def repo_path(self, repo_id: str) -> Path:
        return self.repos_dir / repo_id

    def create_repo(self, repo_id, *, exist_ok=False, **_):
        repo_id = repo_id if "/" in repo_id else f"{self.user}/{repo_id}"
        path = self.repo_path(repo_id)
        if path.exists() and not exist_ok:
            raise ValueError(f"fake hub: {repo_id} exists")
        path.mkdir(parents=True, exist_ok=True)
        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def upload_folder(self, *, repo_id, folder_path, commit_message=None, **_):
        path = self.repo_path(repo_id)
        if not path.is_dir():
            raise RepositoryNotFoundError(f"fake hub: no repository {repo_id}")
        shutil.copytree(folder_path, path, dirs_exist_ok=True)
        self.commits.append((repo_id, commit_message))
        sha = hashlib.sha1(f"{repo_id}{len(self.commits)}".encode()).hexdigest()
        cached = self.cache_dir / f"models--{repo_id.replace('/', '--')}"
        shutil.copytree(path, cached / "snapshots" / sha)
        (cached / "refs").mkdir(parents=True, exist_ok=True)
        (cached / "refs" / "main").write_text(sha)
        return CommitInfo(commit_url=f"https://huggingface.co/{repo_id}/commit/{sha}", commit_message=commit_message,
                          commit_description="", oid=sha)

    def load_card(self, repo_id_or_path, **kwargs):
        if os.path.exists(repo_id_or_path):  # local files are read for real
            return ModelCard(Path(repo_id_or_path).read_text())
        card = self.repo_path(repo_id_or_path) / "README.md"
        if not self.repo_path(repo_id_or_path).is_dir():
            raise RepositoryNotFoundError(f"fake hub: no repository {repo_id_or_path}")
        if not card.is_file():
            raise EntryNotFoundError(f"fake hub: {repo_id_or_path} has no README.md")
        return ModelCard(card.read_text())

    def validate(self, card):
        # The Hub checks the metadata schema; here it must at least parse back into ModelCardData.
        ModelCardData(**card.data.to_dict())
        self.validated.append(card.data.to_dict())

    def install(self, monkeypatch):
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
        monkeypatch.setattr(HfApi, "create_repo", lambda api, repo_id, **kw: self.create_repo(repo_id, **kw))
        monkeypatch.setattr(HfApi, "upload_folder", lambda api, **kw: self.upload_folder(**kw))
        monkeypatch.setattr(HfApi, "create_commit", _unexpected("create_commit"))
        monkeypatch.setattr(HfApi, "upload_file", _unexpected("upload_file"))
        monkeypatch.setattr(ModelCard, "load", classmethod(lambda cls, repo, **kw: self.load_card(repo, **kw)))
        monkeypatch.setattr(RepoCard, "validate", lambda card, repo_type=None: self.validate(card))
        return self


def _unexpected(name):
    def fail(*args, **kwargs):
        raise AssertionError(f"fake hub: {name} was not expected (push uploads one folder per commit)")

    return fail
