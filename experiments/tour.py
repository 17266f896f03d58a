"""``agora tour``: a small run of every experiment, then the gallery page of the fourteen cards.

The tour is a command, not an experiment kind: its YAML file (``experiments/configs/tour.yaml``)
lists runs, each a config with overrides, and has no ``kind``. Every entry is validated before
the tour's folder exists, so a typo in run 9 stops the tour before run 1 starts::

    DIR/tour.yaml         the resolved tour (what `agora tour --out DIR` again continues)
    DIR/runs/NAME/        one run directory per entry
    DIR/gallery.html      the page; DIR/gallery_cards/ its pictures
    DIR/gallery.png       a screenshot of the page (when Chromium is installed)

Running the tour again into the same DIR skips complete runs and resumes interrupted ones.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from experiments.config import read_yaml, resolve_config_path
from experiments.errors import UserError
from experiments.rundir import RunDir, atomic_write_text


class TourEntry(BaseModel):
    """One run of the tour."""

    model_config = ConfigDict(extra="forbid")

    config: str = Field(description="A shipped config name or a path.")
    name: str | None = Field(None, description="Folder name under runs/. Default: the config name.")
    overrides: dict[str, Any] = Field(default_factory=dict, description="key.sub: value overrides.")

    @field_validator("name")
    @classmethod
    def _plain_folder_name(cls, name: str | None) -> str | None:
        if name is not None and (not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name):
            raise ValueError(f"name {name!r} must be a plain folder name (no '/', not '.' or '..')")
        return name

    @property
    def folder(self) -> str:
        return self.name or self.config

    def override_list(self) -> list[str]:
        return [f"{k}={to_yaml(v)}" for k, v in self.overrides.items()]


class TourConfig(BaseModel):
    """A tour: runs, in order, into DIR/runs/NAME, then the gallery."""

    model_config = ConfigDict(extra="forbid")

    description: str = Field("", max_length=1000, description="One line shown by `list`.")
    seed: int = Field(0, ge=0, le=2**32 - 1, description="Seed of every run of the tour.")
    runs: list[TourEntry] = Field(min_length=1, description="The runs, in order.")
    stop_on_failure: bool = Field(False, description="Stop at the first failed run instead of going on.")


def to_yaml(value: Any) -> str:
    """``value`` as the one-line YAML a ``key=value`` override parses back to it."""
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def is_tour(data: dict[str, Any]) -> bool:
    """Whether a config file's contents are a tour (a list of runs, no kind)."""
    return data.get("kind") == "tour" or ("kind" not in data and "runs" in data)


def load(config: str | Path | dict[str, Any] = "tour", *, seed: int | None = None) -> TourConfig:
    """Reads and validates a tour, and every entry's config, before anything is written.

    Raises:
        UserError: naming the entry (``runs.N``) and what is wrong with it.
    """
    from experiments.runner import prepare

    if isinstance(config, dict):
        data = dict(config)
    else:
        path = resolve_config_path(config)
        data = read_yaml(path)
        if data.get("kind") == "tour":  # tour files written when the tour was a kind
            data.pop("kind")
        if "kind" in data:
            raise UserError(f"{str(config)!r} is an experiment config (kind {data['kind']!r}), not a tour; "
                            f"run it with `agora run {config}`")
    if seed is not None:
        data["seed"] = seed
    try:
        tour = TourConfig.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "tour"
        raise UserError(f"tour key {where!r}: {err['msg']}") from None
    names: set[str] = set()
    for i, entry in enumerate(tour.runs):
        name = entry.folder
        if name in names:
            raise UserError(f"tour runs.{i}: the name {name!r} is used twice; give one a 'name'")
        names.add(name)
        if "/" in name:
            raise UserError(f"tour runs.{i}: config {entry.config!r} is a path; give the entry a plain 'name'")
        try:
            prepare(entry.config, overrides=entry.override_list(), seed=tour.seed)
        except UserError as exc:
            raise UserError(f"tour runs.{i} ({name}): {exc}") from None
    return tour


Step = Literal["complete", "resume", "new"]


def next_step(out: Path) -> Step:
    """What a run directory needs: nothing (complete), a resume, or a new run.

    Raises:
        UserError: when ``out`` is a non-empty folder that is not a run directory.
    """
    if RunDir.is_run(out):
        return "complete" if RunDir(out).read_summary()["status"] == "complete" else "resume"
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{str(out)!r} exists and is not a run directory; move it away")
    return "new"


@dataclass
class TourResult:
    """What a tour did: its page, its screenshot (None without Chromium) and the failed runs."""

    path: Path
    page: Path
    screenshot: Path | None
    failed: list[str] = field(default_factory=list)
    wall_time_s: float = 0.0


def run_tour(
    config: str | Path | dict[str, Any] = "tour",
    *,
    out: str | Path | None = None,
    seed: int | None = None,
    quiet: bool = False,
    screenshot: bool = True,
) -> TourResult:
    """Runs (or continues) a tour into ``out`` (default ``runs/tour-TIMESTAMP``) and draws the page.

    Raises:
        UserError: for a bad tour, or an ``out`` that holds another tour, before any run starts.
        RunInterrupted: on SIGTERM or Ctrl-C; `agora tour --out DIR` again continues.
    """
    from experiments import gallery, runner

    tour = load(config, seed=seed)
    root = Path(out) if out is not None else runner.default_out("tour")
    resolved = tour.model_dump(mode="json")
    record = root / "tour.yaml"
    if root.exists():
        if record.is_file():
            if yaml.safe_load(record.read_text()) != resolved:
                raise UserError(f"{str(root)!r} holds another tour (its tour.yaml differs); choose a new --out")
        else:
            RunDir(root).check_new()  # a new tour needs an empty folder, like a run
    else:
        RunDir(root).check_new()
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_text(record, yaml.safe_dump(resolved, sort_keys=False))

    t0 = time.perf_counter()
    failed: list[str] = []
    from experiments.progress import track

    for entry in track(tour.runs, description="tour", quiet=quiet):
        target = root / "runs" / entry.folder
        try:
            step = next_step(target)
            if step == "resume":
                runner.resume(target, quiet=quiet)
            elif step == "new":
                runner.run(entry.config, out=target, overrides=entry.override_list(), seed=tour.seed, quiet=quiet)
        except Exception as exc:  # noqa: BLE001 -- one failed run must not hide the others
            failed.append(entry.folder)
            if not quiet:
                print(f"tour: {entry.folder} failed: {type(exc).__name__}: {exc}")
            if tour.stop_on_failure:
                break
    page = gallery.build([root / "runs"], root / "gallery.html", title="Agora tour")
    shot = take_screenshot(page, root / "gallery.png") if screenshot else None
    return TourResult(root, page, shot, failed, time.perf_counter() - t0)


def take_screenshot(page: Path, png: Path, *, width: int = 1280, height: int = 1900) -> Path | None:
    """A PNG of the top of ``page`` (the cards) by headless Chromium; None when it is not installed.

    Chromium's own ``--screenshot`` flag: no browser driver, nothing from the network.
    """
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        return None
    profile = png.parent / ".chromium-profile"
    try:
        subprocess.run(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", f"--user-data-dir={profile}",
             f"--window-size={width},{height}", f"--screenshot={png.resolve()}", page.resolve().as_uri()],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    return png if png.is_file() else None
