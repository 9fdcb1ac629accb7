"""The race: rivals of the plan trained briefly on the same split, the best on validation trains for real.

``train.race`` lists the rivals (each ``key=value`` overrides joined by ``;``, parsed as ``--set`` parses
them); the plan as written is always contestant 0. ``train.race_share`` of ``train.time_budget_s`` is
shared equally between the contestants. Each trains through the task's own ``prepare_fit`` on the run's
split, with its planned epochs scaled to its share, so its learning-rate schedule runs to the end (a
schedule cut off by the clock would favour whoever is fastest per epoch). Each is scored on validation by
``train.monitor`` at its best epoch; the best wins (ties go to the earlier contestant, so to the plan).

The winner's config, with the budget that is left and its epochs scaled by the same factor, replaces the
run's ``plan.yaml`` (its ``train.race`` emptied, the race in the reasons), and ``run.json`` records the
race (``race``: one entry per contestant with ``overrides``, ``score``, ``epochs``, ``seconds``, and
``error`` for one that failed; ``winner``; ``race_reason``). Each contestant's entry is written as soon as
it finishes, so a resumed run neither reruns a finished race nor a finished contestant. A contestant that
raises is reported and dropped; the run stops only when every contestant failed.

Scratch runs live in ``race/`` inside the run folder and are removed afterwards.
"""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import replace
from pathlib import Path

from medlens._files import write_text_atomic
from medlens.config import Config, apply_overrides, read_plan, render_plan
from medlens.errors import ConfigError
from medlens.runs import RunFolder
from medlens.tasks import task_for

RACE_FOLDER = "race"
MIN_LEFT = 0.05  # share of the budget the winner keeps however long the race ran


def settle_race(run: RunFolder, config: Config, dataset, cases: dict[str, list], *, processes: int = 1,
                log=print) -> Config:
    """Race ``config``'s contestants (when ``train.race`` and ``train.race_share`` ask for it) and return the
    winner's config for the budget that is left; any other config comes back unchanged.

    Args:
        run: the run folder (``run.json`` holds the race; ``plan.yaml`` is rewritten to the winner).
        dataset, cases: what the main fit trains on (``cases``: ``split -> Case records``).
        processes: training processes; a race runs in one process only.

    Raises:
        ConfigError: every contestant failed (each error is listed).
    """
    t = config.train
    if not t.race or t.race_share <= 0:
        return config
    why_not = _cannot_race(config, processes)
    if why_not:
        log(f"race: not run ({why_not}); training the plan as written")
        if processes == 1:  # several processes would all write run.json
            run.update_info(race_reason=f"not run: {why_not}")
        return config
    info = run.read_info()
    results = list(info.get("race") or [])
    if "winner" in info:
        log(f"race: finished before this resume (winner `{info['winner'] or 'the plan'}`); not run again")
    else:
        results = _race(run, config, dataset, cases, results, log)
    return _crown(run, config, results, log)


def _cannot_race(config: Config, processes: int) -> str:
    """Why the race cannot run here (``""`` when it can)."""
    if config.train.time_budget_s <= 0:
        return "train.time_budget_s is 0 (no limit), so there is no budget to share; set a time budget"
    if processes > 1:
        return f"{processes} training processes; the race runs in one"
    return ""


def drop_overridden_rivals(config: Config, keys: list[str], reasons: dict[str, str], log=print) -> Config:
    """The plan's rivals that set none of ``keys``: a rival planned with a value the user then chose on the
    command line (``--set train.max_epochs=3``; ``model.name`` under ``--init-from``) no longer races, so
    the user's choice holds whoever wins. A race the user set themselves (``train.race`` in ``keys``) stays.

    Args:
        keys: ``section.key`` names the user set.
        reasons: the plan's reasons; ``train.race`` says which rivals were dropped and why.
    """
    chosen = {key.strip() for key in keys}
    if not config.train.race or "train.race" in chosen:
        return config
    kept, dropped = [], []
    for rival in config.train.race:
        clash = sorted(chosen & {part.partition("=")[0].strip() for part in split_overrides(rival)})
        (dropped if clash else kept).append((rival, clash))
    if not dropped:
        return config
    note = "; ".join(f"`{rival}` dropped: {', '.join(clash)} set on the command line" for rival, clash in dropped)
    log(f"race: {note}")
    reasons["train.race"] = f"{reasons['train.race']}; {note}" if reasons.get("train.race") else note
    return replace(config, train=replace(config.train, race=tuple(rival for rival, _ in kept)))


def contestants(config: Config) -> list[str]:
    """The overrides of each contestant: ``""`` (the plan as written), then ``train.race`` in order."""
    return ["", *config.train.race]


def contestant_config(config: Config, overrides: str, share_s: float) -> Config:
    """``config`` with ``overrides`` applied, its epochs scaled from the whole budget to ``share_s`` (at least
    one), the share as its hard stop, patience that lets the schedule finish, and no race of its own.

    Raises:
        ConfigError: an override is not ``section.key=value`` or names an unknown key / a bad value.
    """
    raced = apply_overrides(config, split_overrides(overrides))
    t = raced.train
    epochs = max(1, int(t.max_epochs * share_s / config.train.time_budget_s))
    return replace(raced, train=replace(t, max_epochs=epochs, patience=max(t.patience, epochs),
                                        time_budget_s=round(share_s, 1), race=(), race_share=0.0))


def split_overrides(overrides: str) -> list[str]:
    """``"model.name=x;model.width=0.5"`` -> ``["model.name=x", "model.width=0.5"]`` (blanks dropped)."""
    return [part.strip() for part in overrides.split(";") if part.strip()]


def _race(run: RunFolder, config: Config, dataset, cases: dict, results: list[dict], log) -> list[dict]:
    """Train every contestant not in ``results`` yet; each result goes to ``run.json`` once it is in."""
    entrants = contestants(config)
    share_s = config.train.race_share * config.train.time_budget_s / len(entrants)
    done = {r["overrides"] for r in results}
    run.update_info(status="racing")
    log(f"race: {len(entrants)} contestants, {share_s:.0f} s each ({config.train.race_share:.0%} of the "
        f"{config.train.time_budget_s:.0f} s budget), scored by {config.train.monitor} on validation")
    for number, overrides in enumerate(entrants):
        if overrides in done:
            continue
        scratch = RunFolder(run.root / RACE_FOLDER / f"contestant{number}")
        try:
            result = run_contestant(scratch, config, overrides, share_s, dataset, cases, log)
        except KeyboardInterrupt:
            run.update_info(status="interrupted")  # the finished contestants stay in run.json for --resume
            raise
        results.append(result)
        run.update_info(race=results)
        log(f"race: {describe(result)}")
    shutil.rmtree(run.root / RACE_FOLDER, ignore_errors=True)
    return results


def run_contestant(scratch: RunFolder, config: Config, overrides: str, share_s: float, dataset, cases: dict,
                   log) -> dict:
    """Train one contestant into the scratch folder ``scratch`` (emptied first) and score it on validation.

    Returns:
        ``{"overrides", "score", "epochs", "seconds"}``, plus ``"monitor"``; a contestant that raised has
        ``score`` ``None`` and ``"error"`` (the exception's type and message) instead.

    Raises:
        KeyboardInterrupt: training was interrupted (the run stops, as the main fit would).
    """
    from medlens.engine.lightning import build_trainer

    shutil.rmtree(scratch.root, ignore_errors=True)
    scratch.root.mkdir(parents=True)
    started = time.perf_counter()
    seconds = lambda: round(time.perf_counter() - started, 1)  # noqa: E731
    try:
        raced = contestant_config(config, overrides, share_s)
        task = task_for(raced)
        task.check(raced)
        fit = task.prepare_fit(raced, dataset, cases, world_size=1, log=log)
        trainer, _ = build_trainer(scratch, fit.config, fit.csv_metrics, progress_bar=False,
                                      steps_per_epoch=fit.steps_per_epoch, select_by=fit.select_by)
        trainer.fit(fit.module, fit.train_loader, fit.val_loader)
    except Exception as exc:  # noqa: BLE001 - a failing contestant is dropped, never the run
        return {"overrides": overrides, "score": None, "epochs": 0, "seconds": seconds(),
                "error": f"{type(exc).__name__}: {exc}"}
    if trainer.interrupted:
        raise KeyboardInterrupt
    monitor = fit.config.train.monitor
    score = best_score(scratch, monitor, trainer)
    result = {"overrides": overrides, "score": score, "epochs": int(trainer.current_epoch), "seconds": seconds(),
              "monitor": monitor}
    if score is None:
        result["error"] = f"no finite {monitor} on validation in {trainer.current_epoch} epoch(s)"
    return result


def best_score(scratch: RunFolder, monitor: str, trainer) -> float | None:
    """``monitor`` at the contestant's best epoch in its ``metrics.csv``; else (stopped by its share of the budget
    before an epoch ended) at the validation run when it stopped; ``None`` when no finite value was logged."""
    values = [float(row[monitor]) for row in scratch.read_epoch_rows() if row.get(monitor)]
    if not values and monitor in trainer.callback_metrics:
        values = [float(trainer.callback_metrics[monitor])]
    values = [v for v in values if math.isfinite(v)]
    if not values:
        return None
    return round(min(values) if lower_is_better(monitor) else max(values), 6)


def lower_is_better(monitor: str) -> bool:
    return monitor == "val_loss"


def describe(result: dict) -> str:
    """One line for the log: who, and how it did."""
    who = f"`{result['overrides']}`" if result["overrides"] else "the plan as written"
    if "error" in result:
        return f"{who} dropped after {result['seconds']:.0f} s: {result['error']}"
    return (f"{who}: {result['monitor']} {result['score']:.4f} after {result['epochs']} epoch(s) in "
            f"{result['seconds']:.0f} s")


def pick_winner(results: list[dict]) -> dict:
    """The best scored contestant; ties go to the earlier one (the plan first).

    Raises:
        ConfigError: no contestant has a score (every error listed).
    """
    scored = [r for r in results if r.get("score") is not None and "error" not in r]
    if not scored:
        failures = "\n".join(f"  {describe(r)}" for r in results)
        raise ConfigError(f"every contestant of the race failed:\n{failures}\nfix the plan or the rivals in "
                          "train.race, or set train.race_share=0 to train the plan without a race")
    sign = -1.0 if lower_is_better(scored[0]["monitor"]) else 1.0
    return max(scored, key=lambda r: (sign * r["score"], -results.index(r)))


def after_race(config: Config, winner: str, spent_s: float) -> Config:
    """The winner's config for the main fit: the budget left after ``spent_s`` seconds of race (at least
    ``MIN_LEFT`` of it), its epochs scaled by the same factor, and no race."""
    won = apply_overrides(config, split_overrides(winner))
    budget = config.train.time_budget_s
    left = max(budget - spent_s, MIN_LEFT * budget)
    epochs = max(1, int(won.train.max_epochs * left / budget))
    return replace(won, train=replace(won.train, time_budget_s=round(left, 1), max_epochs=epochs, race=(),
                                      race_share=0.0))


def _crown(run: RunFolder, config: Config, results: list[dict], log) -> Config:
    """Record the winner in ``run.json``, rewrite ``plan.yaml`` to its config, and return that config."""
    winner = pick_winner(results)
    spent = sum(r["seconds"] for r in results)
    final = after_race(config, winner["overrides"], spent)
    reason = race_reason(results, winner, config, spent)
    run.update_info(race=results, winner=winner["overrides"], race_reason=reason)
    rewrite_plan(run.plan, final, race_reasons(config, final, winner, reason))
    log(f"race: winner {describe(winner)}; it trains for the {final.train.time_budget_s:.0f} s left "
        f"({final.train.max_epochs} epochs)")
    return final


def race_reason(results: list[dict], winner: dict, config: Config, spent_s: float) -> str:
    """The race in one sentence: who ran, who won, by how much, at what cost."""
    plan = next((r for r in results if r["overrides"] == ""), None)
    versus = (f" against the plan's {plan['score']:.4f}" if plan and plan.get("score") is not None
              and winner is not plan else "")
    dropped = sum("error" in r for r in results)
    return (f"raced {len(results)} contestants on validation for {spent_s:.0f} s "
            f"({config.train.race_share:.0%} of the {config.train.time_budget_s:.0f} s budget"
            f"{f'; {dropped} dropped' if dropped else ''}): winner "
            f"{'`' + winner['overrides'] + '`' if winner['overrides'] else 'the plan as written'} with "
            f"{winner['monitor']} {winner['score']:.4f}{versus}; run.json lists the race")


def race_reasons(config: Config, final: Config, winner: dict, reason: str) -> dict[str, str]:
    """The reasons of ``plan.yaml`` (keys the winner set, the budget, the epochs and the race)."""
    reasons = {key: f"the race's winner ({winner['monitor']} {winner['score']:.4f} on validation)"
               for key in (o.partition("=")[0].strip() for o in split_overrides(winner["overrides"]))}
    budget = config.train.time_budget_s
    reasons["train.time_budget_s"] = f"hard stop: what the race left of the {budget:.0f} s budget"
    reasons["train.max_epochs"] = (f"the winner's epochs for the whole {budget:.0f} s budget, scaled to the "
                                   f"{final.train.time_budget_s:.0f} s left")
    reasons["train.race"] = reason
    reasons["train.race_share"] = f"the race has run ({config.train.race_share:.0%} of the budget): not run again"
    return reasons


def rewrite_plan(path: Path, config: Config, changed: dict[str, str]) -> None:
    """Write ``config`` to the plan at ``path``, keeping its header and the reasons of the keys not in ``changed``."""
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    leading = next((i for i, line in enumerate(lines) if not line.startswith("#")), len(lines))
    header = "\n".join(line.removeprefix("#").removeprefix(" ") for line in lines[:leading])
    reasons = {**read_plan(path)[1], **changed}
    write_text_atomic(path, render_plan(config, reasons, header, omit=task_for(config).ignored))
