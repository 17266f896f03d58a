"""The tour: a small run of every experiment that exists, then the gallery page."""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator, model_validator

from experiments.config import ExperimentConfig, Section
from experiments.kinds import register_kind
from experiments.rundir import RunContext, RunDir


class TourEntry(Section):
    """One run of the tour."""

    config: str = Field(description="A shipped config name or a path.")
    name: str | None = Field(None, description="Folder name under runs/. Default: the config name.")
    overrides: dict[str, Any] = Field(default_factory=dict, description="key.sub: value overrides.")

    @field_validator("name")
    @classmethod
    def _plain_folder_name(cls, name: str | None) -> str | None:
        if name is not None and (not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name):
            raise ValueError(f"name {name!r} must be a plain folder name (no '/', not '.' or '..')")
        return name


class TourConfig(ExperimentConfig):
    """Runs each entry into DIR/runs/NAME, then writes DIR/gallery.html."""

    runs: list[TourEntry] = Field(default_factory=list, description="The runs, in order.")
    stop_on_failure: bool = Field(False, description="Stop at the first failed run instead of going on.")

    @model_validator(mode="after")
    def _entries_are_runnable(self) -> TourConfig:
        # Each entry's config is read and validated now, so a typo in run 9 stops the tour
        # before run 1 starts (and before the tour's own directory exists).
        from experiments.errors import UserError
        from experiments.runner import prepare

        names: set[str] = set()
        for i, entry in enumerate(self.runs):
            name = entry.name or entry.config
            if name in names:
                raise ValueError(f"runs.{i}: the name {name!r} is used twice; give one a 'name'")
            names.add(name)
            if "/" in name and entry.name is None:
                raise ValueError(f"runs.{i}: config {entry.config!r} is a path; give the entry a plain 'name'")
            try:
                spec, _, _ = prepare(entry.config, overrides=[f"{k}={_yaml(v)}" for k, v in entry.overrides.items()],
                                     seed=self.seed)
            except UserError as exc:
                raise ValueError(f"runs.{i} ({name}): {exc}") from None
            if spec.name == "tour":
                raise ValueError(f"runs.{i} ({name}): a tour cannot run another tour")
        return self


@register_kind("tour", TourConfig, axis="intelligence", description="A small run of every experiment, then the gallery")
def run_tour(cfg: TourConfig, ctx: RunContext) -> dict[str, Any]:
    from experiments import gallery, runner

    root = ctx.path / "runs"
    failed: list[str] = []
    done = set(ctx.resume_state or [])
    for entry in ctx.progress(cfg.runs, description="tour"):
        name = entry.name or entry.config
        out = root / name
        if name in done:
            continue
        overrides = [f"{k}={_yaml(v)}" for k, v in entry.overrides.items()]
        try:
            if RunDir.is_run(out) and RunDir(out).read_summary()["status"] != "complete":
                runner.resume(out, quiet=ctx.quiet)
            elif not RunDir.is_run(out):
                runner.run(entry.config, out=out, overrides=overrides, seed=cfg.seed, quiet=ctx.quiet)
        except Exception as exc:  # noqa: BLE001 -- one failed run must not hide the others
            failed.append(name)
            ctx.info(f"tour: {name} failed: {type(exc).__name__}: {exc}")
            if cfg.stop_on_failure:
                break
        summary = RunDir(out).read_summary() if RunDir.is_run(out) else {"status": "failed"}
        ctx.log(run=name, status=summary["status"])
        if summary["status"] == "complete":
            done.add(name)
        ctx.save_checkpoint(sorted(done))
    page = gallery.build([root], ctx.path / "gallery.html", title="Agora tour")
    ctx.info(f"gallery: {page.resolve()}")
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(cfg.runs)} tour runs failed: {', '.join(failed)} (gallery: {page})")
    return {"runs": len(cfg.runs), "complete": len(done), "gallery": str(page)}


def _yaml(value: Any) -> str:
    import yaml

    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
