"""medlens' Flower app: the ServerApp that coordinates rounds and the ClientApp every site runs.

Round 0: each site sends its summary (:func:`medlens.federated.summaries.site_summary`); the server checks them
and makes one plan (:func:`medlens.federated.plan.plan_federation`), then asks one site for the plan's freshly
initialised weights. Rounds 1..R: the server sends the global weights with the plan, each site trains locally
(:class:`medlens.federated.local.SiteTrainer`; its split, made at its summary, kept in its SuperNode's
``context.state``) and sends weights, its number of training cases and metrics;
the server refuses unsound updates (:mod:`medlens.federated.updates`), averages the rest by training cases
(FedAvg / FedProx; FedBN keeps BatchNorm layers on the sites) and checkpoints the global model. Where the task
offers validation aggregates, each site first scores the global model it received on its validation split, and
after the last round the final one: the server keeps the round whose global model scores best over all sites'
validation splits together (as ``medlens train`` keeps its best epoch). At the end it writes an ordinary run
folder (:func:`medlens.federated.result.write_run`).

Every message the ServerApp receives is described in ``RUN/federated/messages.jsonl`` (record names, array
keys / shapes / bytes, config and metric values), so what crossed the wire can be audited.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from medlens.errors import MedlensError
from medlens.federated import server as checkpoints
from medlens.federated import site, worker
from medlens.federated.updates import Update, average, check_update, shared_keys

server_app = ServerApp()
client_app = ClientApp()
POLL_S = 0.5


def to_record(weights: dict[str, np.ndarray]) -> ArrayRecord:
    # np.asarray(order="C"), not np.ascontiguousarray: that turns 0-d arrays (num_batches_tracked) into 1-d ones
    return ArrayRecord.from_array_dict({key: Array(np.asarray(value, order="C")) for key, value in weights.items()})


def from_record(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {key: array.numpy() for key, array in record.items()}


# ---- the site: ClientApp ----

@client_app.query()
def _query(msg: Message, context: Context) -> Message:
    """Round 0: the site's summary, then (``step: clinical``) its clinical columns' training moments; after the
    last round (``step: calibration``), its calibration aggregates."""
    task, kept = msg.content["task"], _kept_split(context)
    if task["step"] == "clinical":
        return _answer(msg, context, lambda: {"clinical": ConfigRecord({"json": json.dumps(
            worker.call(context.node_config, "clinical_moments", task["config"], kept_split=kept))})})
    if task["step"] == "calibration":
        return _answer(msg, context, lambda: {"calibration": ConfigRecord({"json": json.dumps(
            worker.call(context.node_config, "calibration_statistics", task["config"], task["plan"],
                        from_record(msg.content["global"]), kept_split=kept))})})

    def summary() -> dict:
        summary, split = worker.call(context.node_config, "summarise")
        _keep_split(context, split)
        return {"summary": ConfigRecord({"json": json.dumps(summary)})}

    return _answer(msg, context, summary)


def _kept_split(context: Context) -> dict | None:
    """The split this site made at its first message of the run (kept in the SuperNode's ``context.state``, which
    never leaves the site), so that later messages need not audit every image again."""
    return json.loads(context.state["split"]["json"]) if "split" in context.state else None


def _keep_split(context: Context, split: dict) -> None:
    context.state["split"] = ConfigRecord({"json": json.dumps(split)})


@client_app.train()
def _train(msg: Message, context: Context) -> Message:
    """One round of local training from the global weights.

    Flower starts a new ClientApp process per message; what a site keeps between rounds lives in the SuperNode's
    ``context.state``: its split (audited once), FedBN's own layers and the DP accountant (so epsilon is counted
    over the whole run).
    """
    task, received = msg.content["task"], from_record(msg.content["global"])
    local = from_record(context.state["local"]) if "local" in context.state else {}
    privacy = json.loads(context.state["privacy"]["json"]) if "privacy" in context.state else None

    kept = _kept_split(context)

    def content() -> dict:
        weights, n_examples, metrics, spent, validation, split = worker.call(
            context.node_config, "fit", task["config"], task["plan"], received, round=int(task["round"]), local=local,
            privacy=privacy, validate=bool(task.get("validate", 0)), kept_split=kept)
        if split is not kept:  # made again: the site's data changed since (or no summary kept one)
            _keep_split(context, split)
        context.state["local"] = to_record({k: v for k, v in weights.items() if k not in received})
        if spent is not None:
            context.state["privacy"] = ConfigRecord({"json": json.dumps(spent)})
        numbers = {k: float(v) for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}
        records = {"weights": to_record(weights), "metrics": MetricRecord({"num-examples": n_examples, **numbers})}
        if validation is not None:  # aggregates of the global model received, for the server's choice of round
            records["validation"] = ConfigRecord({"json": json.dumps(validation)})
        return records

    return _answer(msg, context, content)


def _answer(msg: Message, context: Context, content) -> Message:
    """Reply with ``content()`` and the site's name; a refusal (bad data, a plan it cannot honour) as its reason."""
    meta = {"site": str(context.node_config.get("name", "site"))}
    try:
        records = content()  # the site's work, in its warm worker (:mod:`medlens.federated.worker`) where it has one
    except (MedlensError, FileNotFoundError) as exc:
        print(f"medlens site {meta['site']}: error: {exc}", flush=True)  # in full, on the site's own log only
        reason = f"{type(exc).__name__}: {site.redact(str(exc))} (details in the site's log)"
        records, meta = {}, {**meta, "error": reason}
    return Message(RecordDict({**records, "meta": ConfigRecord(meta)}), reply_to=msg)


# ---- the coordinator: ServerApp ----

@dataclass(frozen=True)
class Settings:
    """The ServerApp's run config (see :func:`medlens.federated.server.run_config`)."""

    out: Path
    rounds: int | None
    min_sites: int
    expect_sites: int
    plan: Path | None
    time_budget_s: float | None
    dp_epsilon: float | None
    round_timeout_s: float
    wait_sites_s: float
    calibrate_on: dict[str, Path]  # {site: data} on the server's machine (federate), else empty
    strategy: str | None = None
    shared_machine: bool = False
    local_epochs: int | None = None

    @classmethod
    def from_run_config(cls, config) -> Settings:
        return cls(Path(str(config["out"])), int(config["rounds"]) or None, int(config["min-sites"]),
                   int(config["expect-sites"]), Path(str(config["plan"])) if config["plan"] else None,
                   float(config["time-budget-s"]) or None, float(config["dp-epsilon"]) or None,
                   float(config["round-timeout-s"]), float(config["wait-sites-s"]),
                   checkpoints.decode_sites(str(config["calibrate-on"])),
                   str(config.get("strategy", "")) or None,
                   bool(config.get("shared-machine", False)), int(config.get("local-epochs", 0)) or None)


@server_app.main()
def _coordinate(grid: Grid, context: Context) -> None:
    Federation(grid, Settings.from_run_config(context.run_config)).run()


class Federation:
    """The rounds of one federation, on Flower's :class:`~flwr.serverapp.Grid`."""

    def __init__(self, grid: Grid, settings: Settings) -> None:
        self.grid, self.settings, self.out = grid, settings, settings.out
        self.refusals: dict[str, str] = {}  # site -> its own refusal, in the last exchange
        (self.out / "federated").mkdir(parents=True, exist_ok=True)

    def log(self, line: str) -> None:
        line = f"{time.strftime('%H:%M:%S')} {line}"
        print(line, flush=True)
        with open(self.out / "federated" / "server.log", "a", encoding="utf-8") as file:
            file.write(line + "\n")

    def run(self) -> None:
        state = checkpoints.read_state(self.out)
        if state.get("finished"):
            self.log(f"federation in {self.out} already finished; nothing to do")
            return
        try:
            self._run(state)
        except MedlensError as exc:
            self.log(f"error: {exc}")
            state = checkpoints.read_state(self.out)
            from medlens._files import write_json_atomic

            write_json_atomic(checkpoints.state_path(self.out), {**state, "error": str(exc)})
            raise

    def _run(self, state: dict) -> None:
        if state:
            self.log(f"resuming after round {state['round']} from {state['weights']}")
            weights = checkpoints.load_weights(self.out, state)
        else:
            state, weights = self.start()
        config, plan = _config(state["config"]), site.plan_from_json(json.dumps(state["plan"]))
        validate = self.keeps_last(config, plan) is None
        number = state["round"] + 1
        while number <= plan.rounds:  # the plan's rounds may change after round 1 (replan)
            if self.budget_spent(state["history"], plan):
                break
            weights, record, validation = self.train_round(number, config, plan, weights, state, validate=validate)
            state = self.score_round({**state, "round": number, "history": [*state["history"], record],
                                      "error": None}, number - 1, validation, config)
            if number == 1 and (replanned := self.replan(plan, record)) is not None:
                plan, state = replanned, {**state, "plan": asdict(replanned)}
            checkpoints.save_round(self.out, state, weights)
            self.log(f"round {number}/{plan.rounds}: global model checkpointed")
            number += 1
        self.finish(config, plan, weights, state)

    def replan(self, plan, record: dict):
        """After round 1 of a federation planned from its time budget: rounds x local epochs for the rest of it at the
        pace round 1 measured (:func:`~medlens.federated.plan.replan_after_first_round`); ``None`` when the rounds or
        local epochs were asked for, under DP (its noise was set for the planned epochs), or without a budget."""
        from medlens.federated.plan import replan_after_first_round

        s = self.settings
        if s.rounds or s.local_epochs or not s.time_budget_s or plan.dp_epsilon is not None or plan.rounds < 2:
            return None
        new = replan_after_first_round(plan, record, s.time_budget_s)
        if new is not None:
            self.log(f"plan: {new.rounds} round(s), {new.local_epochs} local epoch(s) from round 2 (planned "
                     f"{plan.rounds} x {plan.local_epochs}): {new.reasons['rounds']}")
        return new

    def budget_spent(self, history: list[dict], plan) -> bool:
        """Whether the next round would end past the time budget (the mean round so far of the plan's local epochs:
        round 1's may differ, :meth:`replan`), when the rounds were planned from the budget; rounds asked for
        (``--rounds``) all run."""
        budget = self.settings.time_budget_s
        if not budget or self.settings.rounds or not history:
            return False
        spent = sum(float(h.get("seconds") or 0.0) for h in history)
        alike = [h for h in history if h.get("local_epochs", plan.local_epochs) == plan.local_epochs] or history
        if spent + sum(float(h.get("seconds") or 0.0) for h in alike) / len(alike) <= budget:
            return False
        self.log(f"time budget: {spent:.0f} s of {budget:.0f} s spent in {len(history)} round(s), the next would end "
                 f"past it; stopping after round {len(history)} of the {plan.rounds} planned")
        return True

    def start(self) -> tuple[dict, dict[str, np.ndarray]]:
        """Round 0: summaries -> plan -> initial weights; checkpointed as round 0."""
        from medlens.federated.plan import plan_federation

        nodes = self.wait_for_sites(self.settings.expect_sites)
        replies = self.exchange(nodes, "query", lambda node: {"task": ConfigRecord({"step": "summary"})},
                                round=0, need=self.settings.min_sites)
        summaries = {name: json.loads(reply.content["summary"]["json"]) for name, reply in replies.items()}
        if len(summaries) < self.settings.min_sites:
            raise MedlensError(f"round 0: {len(summaries)} site(s) sent a summary, {self.settings.min_sites} needed "
                               f"(refused: {self.refusals or 'none'}); fix the refused sites' data and start again")
        self.log(f"round 0: summaries from {len(summaries)} site(s): {', '.join(sorted(summaries))}")
        reasons: dict[str, str] = {}
        config, plan = plan_federation(summaries, rounds=self.settings.rounds, min_sites=self.settings.min_sites,
                                       time_budget_s=self.settings.time_budget_s, dp_epsilon=self.settings.dp_epsilon,
                                       task_reasons=reasons, strategy=self.settings.strategy,
                                       shared_machine=self.settings.shared_machine,
                                       local_epochs=self.settings.local_epochs)
        if self.settings.plan is not None:
            from medlens.config import read_plan
            from medlens.federated.plan import private_network

            config, reasons = read_plan(self.settings.plan)
            if plan.dp_epsilon is not None:
                config = private_network(config, reasons)
        if config.clinical.numeric and not config.clinical.standardise:
            config = self.pool_clinical(nodes, config, reasons, summaries)
        self.log(f"plan: {plan.strategy} ({plan.reasons.get('strategy', '')}), {plan.rounds} round(s) x "
                 f"{plan.local_epochs} local epoch(s), at least {plan.min_sites} site(s) a round")
        from medlens.federated.local import initial_weights

        weights = initial_weights(config, plan)  # the same seeded network every site builds
        state = {"round": 0, "config": _plain(config), "plan": asdict(plan), "reasons": reasons, "summaries": summaries,
                 "history": [], "finished": False, "error": None}
        checkpoints.save_round(self.out, state, weights)
        return state, weights

    def pool_clinical(self, nodes: list[int], config, reasons: dict, summaries: dict):
        """The plan with ``clinical.standardise``: the numeric clinical columns' mean and SD over every site's
        training split together, from each site's count, sum and sum of squares, so that every site (and the
        deployed model) z-scores a value alike.

        Raises:
            MedlensError: fewer than ``min_sites`` sites sent their moments.
        """
        from dataclasses import replace

        from medlens.data.clinical import standardise_entries

        content = ConfigRecord({"step": "clinical", "config": json.dumps(_plain(config))})
        replies = self.exchange(nodes, "query", lambda _: {"task": content}, round=0, need=self.settings.min_sites)
        moments = {n: json.loads(r.content["clinical"]["json"]) for n, r in replies.items() if n in summaries}
        if len(moments) < self.settings.min_sites:
            raise MedlensError(f"round 0: {len(moments)} site(s) sent their clinical statistics, "
                               f"{self.settings.min_sites} needed (refused: {self.refusals or 'none'})")
        entries = standardise_entries(moments.values())
        reasons["clinical.standardise"] = (
            f"the mean and SD of each numeric column over the training splits of {len(moments)} sites together "
            f"({', '.join(sorted(moments))}), pooled from each site's count, sum and sum of squares (no single "
            "value left a site): every site, and the deployed model, z-scores a value alike")
        self.log(f"round 0: clinical statistics pooled from {len(moments)} site(s): {', '.join(entries)}")
        return replace(config, clinical=replace(config.clinical, standardise=entries))

    def train_round(self, number: int, config, plan, weights: dict[str, np.ndarray], state: dict, *,
                    validate: bool = False):
        """One round: send, collect, check, average.

        Returns:
            The new global weights, the round's record, and (``validate``) ``{site: validation aggregates}`` of the
            global model the sites received, from the sites whose updates were sound.
        """
        started = time.monotonic()
        sent = {key: weights[key] for key in shared_keys(weights, plan.strategy)}
        task = ConfigRecord({"config": json.dumps(_plain(config)), "plan": site.plan_to_json(plan), "round": number,
                             "validate": int(validate)})
        nodes = self.wait_for_sites(plan.min_sites)
        replies = self.exchange(nodes, "train", lambda _: {"global": to_record(sent), "task": task}, round=number,
                                need=plan.min_sites)
        updates, rejected = self.sound_updates(replies, weights, state["summaries"])
        rejected = {**self.refusals, **rejected}
        if len(updates) < plan.min_sites:
            raise MedlensError(f"round {number}: {len(updates)} sound update(s), the plan needs {plan.min_sites} "
                               f"(refused: {rejected or 'none'}); the last global checkpoint is kept")
        averaged = average(updates, list(weights))
        kept = sorted(set(weights) - set(sent))
        if kept:  # FedBN: each site's own layers, as it last sent them, for scoring the model it actually uses
            checkpoints.save_site_norms(self.out, {u.site: {k: u.weights[k] for k in kept} for u in updates})
        self.log(f"round {number}: averaged {len(updates)} site(s) ({', '.join(u.site for u in updates)}) by "
                 f"training cases" + (f"; refused {', '.join(rejected)}" if rejected else ""))
        validation = {u.site: json.loads(replies[u.site].content["validation"]["json"]) for u in updates
                      if "validation" in replies[u.site].content}
        return averaged, {"round": number, "seconds": round(time.monotonic() - started, 2),
                          "local_epochs": plan.local_epochs, "rejected": rejected,
                          "kept_at_sites": kept,  # FedBN: never sent back, each site's own
                          "sites": {u.site: {"n_examples": u.n_examples, **u.metrics} for u in updates}}, validation

    # ---- which round's global model the run keeps ----

    def keeps_last(self, config, plan) -> str | None:
        """Why the run keeps the last round's global model (``None``: it keeps the round of the best validation
        score over all sites' validation splits, from their aggregates)."""
        from medlens.tasks import task_for

        aggregates = task_for(config).aggregate_calibration
        if aggregates is None or not aggregates.applies(config):
            return f"{config.dataset.task} labels: the task offers no validation aggregates"
        if plan.dp_epsilon is not None:
            return "differential privacy: validation aggregates are not counted in the sites' epsilon"
        if plan.strategy == "fedbn":
            return "FedBN: a site scores the model with its own batch norm, the run deploys the averaged one"
        return None

    def score_round(self, state: dict, number: int, validation: dict[str, dict], config) -> dict:
        """``state`` with round ``number``'s global model scored from the sites' validation aggregates, and the best
        round so far (with its aggregates) under ``state["selection"]``. A round scored by fewer than every site
        of round 0 is no candidate (its score would not compare); round 0, the untrained model, neither."""
        everyone = sorted(state["summaries"])
        if number < 1 or not validation:
            return state
        if sorted(validation) != everyone:
            self.log(f"round {number}: validation scores from {len(validation)} of {len(everyone)} site(s); the "
                     "round is not a candidate for the model kept")
            return state
        from medlens.tasks import task_for

        stats = [validation[name] for name in everyone]
        score, what = task_for(config).aggregate_calibration.score(stats, config)
        selection = dict(state.get("selection") or {})
        selection["scores"] = {**selection.get("scores", {}), str(number): score}
        selection["what"] = what
        if score >= selection.get("best_score", -np.inf):  # ties: the later round, trained longer
            selection.update(best_round=number, best_score=score, best_stats=stats)
        self.log(f"round {number}: the global model's {what} over {len(everyone)} sites' validation splits "
                 f"together: {score:.4f}")
        return {**state, "selection": selection}

    def keep_best(self, weights: dict[str, np.ndarray], state: dict) -> tuple[dict[str, np.ndarray], dict]:
        """The best round's global weights, and ``state`` with ``kept`` (what the run folder says of it)."""
        selection, last = state.get("selection") or {}, state["round"]
        best = selection.get("best_round")
        if best is None:
            return weights, state
        scores = selection["scores"]
        rule = (f"the round whose global model has the best {selection['what']} over all sites' validation splits "
                f"together (from their aggregates): round {best} ({scores[str(best)]:.4f})")
        if best != last and str(last) in scores:
            rule += f"; round {last}, the last, {scores[str(last)]:.4f}"
            weights = checkpoints.load_weights(self.out, {"weights": f"global_round_{best}.safetensors",
                                                          "round": best})
        self.log(f"model kept: {rule}")
        return weights, {**state, "kept": {"round": best, "rule": rule, "scores": scores}}

    def sound_updates(self, replies: dict, weights: dict, summaries: dict) -> tuple[list[Update], dict[str, str]]:
        expected = {key: tuple(value.shape) for key, value in weights.items()}
        updates, rejected = [], {}
        for name, reply in replies.items():
            metrics = dict(reply.content["metrics"])
            update = Update(name, from_record(reply.content["weights"]), int(metrics.pop("num-examples", 0)),
                            metrics)
            reason = (check_update(update, expected) if name in summaries else
                      f"site {name!r} was not in round 0, so the plan was not checked against its data")
            if reason:
                self.log(f"refused update: {reason}")
                rejected[name] = reason
            else:
                updates.append(update)
        return updates, rejected

    def finish(self, config, plan, weights: dict[str, np.ndarray], state: dict) -> None:
        from medlens.federated.result import write_run

        sites = {name: _site_record(name, state) for name in state["summaries"]}
        if (why := self.keeps_last(config, plan)) is None:
            final = self.site_aggregates(config, plan, weights, state)
            weights, state = self.keep_best(weights, self.score_round(state, state["round"], final, config))
        else:
            self.log(f"model kept: the last round's ({why})")
        from_sites = None if self.settings.calibrate_on else self.calibrate_at_sites(config, plan, weights, state)
        taking_part = {name: data for name, data in self.settings.calibrate_on.items() if name in state["summaries"]}
        write_run(self.out, config, plan, weights, state["history"], sites, reasons=state.get("reasons"),
                  calibrate_on=taking_part, site_calibration=from_sites, kept=state.get("kept"), log=self.log)
        from medlens._files import write_json_atomic

        write_json_atomic(checkpoints.state_path(self.out), {**state, "finished": True})
        self.log(f"federation finished after {len(state['history'])} round(s); run folder {self.out}")

    def calibrate_at_sites(self, config, plan, weights: dict[str, np.ndarray], state: dict) -> dict | None:
        """``calibration.json`` from the sites' validation aggregates (the task's ``aggregate_calibration``), or
        ``None`` (logged) for a task it does not cover, under DP, or when no site answered."""
        from medlens.tasks import task_for

        aggregates = task_for(config).aggregate_calibration
        if aggregates is None or not aggregates.applies(config) or plan.dp_epsilon is not None:
            why = (f"{config.dataset.task} labels" if plan.dp_epsilon is None else
                   "differential privacy (validation aggregates are not counted in the sites' epsilon)")
            self.log(f"calibration: none from the sites under {why}; temperature 1, threshold 0.5")
            return None
        kept = state.get("kept")
        if kept is not None:  # the kept round's aggregates, sent when it was scored: no second query
            names, stats = sorted(state["summaries"]), state["selection"]["best_stats"]
        else:
            answered = self.site_aggregates(config, plan, weights, state)
            names, stats = sorted(answered), [answered[name] for name in sorted(answered)]
        if not stats:
            self.log(f"calibration: no site answered (refused: {self.refusals or 'none'}); temperature 1, "
                     "threshold 0.5")
            return None
        result = {**aggregates.combine(stats, config), "sites": names}
        self.log(f"calibration from {len(stats)} site(s)' validation aggregates: temperature "
                 f"{result['temperature']:.3f}, threshold {result['threshold']:.3f}")
        return result

    def site_aggregates(self, config, plan, weights: dict[str, np.ndarray], state: dict) -> dict[str, dict]:
        """``{site: aggregates}`` of ``weights`` on each checked site's validation split (``step: calibration``)."""
        content = ConfigRecord({"step": "calibration", "config": json.dumps(_plain(config)),
                                "plan": site.plan_to_json(plan)})
        replies = self.exchange(self.connected(), "query", lambda _: {"task": content, "global": to_record(weights)},
                                round=len(state["history"]), need=1)
        return {name: json.loads(reply.content["calibration"]["json"]) for name, reply in replies.items()
                if name in state["summaries"]}  # checked sites

    # ---- talking to sites through the Grid ----

    def connected(self) -> list[int]:
        return sorted(self.grid.get_node_ids())

    def wait_for_sites(self, count: int) -> list[int]:
        """Connected sites once ``count`` are (within ``wait_sites_s``).

        Raises:
            MedlensError: fewer connected in time.
        """
        deadline = time.monotonic() + self.settings.wait_sites_s
        while len(nodes := self.connected()) < count:
            if time.monotonic() > deadline:
                raise MedlensError(f"{len(nodes)} site(s) connected within {self.settings.wait_sites_s:.0f} s, "
                                   f"{count} needed: start the sites (`medlens fl site --server ...`) or lower "
                                   "--min-sites")
            time.sleep(POLL_S)
        return nodes

    def exchange(self, nodes: list[int], kind: str, content, *, round: int, need: int | None = None) -> dict:
        """Send one message per node and collect the answers (``{site: reply}``, errors logged and left out).

        Waits until every node answered, or ``need`` answered and the others have left the federation, or the
        round timeout passed.
        """
        self.refusals: dict[str, str] = {}
        messages = [Message(RecordDict(content(node)), dst_node_id=node, message_type=kind) for node in nodes]
        pending = {mid: node for mid, node in zip(self.grid.push_messages(messages), nodes, strict=True) if mid}
        answers: dict[str, Message] = {}
        deadline = time.monotonic() + self.settings.round_timeout_s
        while pending and time.monotonic() < deadline:
            for reply in self.grid.pull_messages(list(pending)):
                pending.pop(reply.metadata.reply_to_message_id, None)
                self._take(reply, kind, round, answers)
            gone = set(pending.values()) - set(self.connected())
            if pending and len(answers) >= (need or len(nodes)) and gone == set(pending.values()):
                break
            time.sleep(POLL_S)
        if pending:
            self.log(f"round {round}: {len(pending)} site(s) did not answer ({kind}); going on without them")
        return answers

    def _take(self, reply: Message, kind: str, round: int, answers: dict) -> None:
        if reply.has_error():
            self.log(f"round {round}: a site failed ({kind}): {reply.error.reason}")
            return
        name = str(reply.content["meta"]["site"])
        self._describe(reply, kind, round, name)
        if "error" in reply.content["meta"]:
            self.refusals[name] = str(reply.content["meta"]["error"])
            self.log(f"round {round}: site {name!r} refused ({kind}): {self.refusals[name]}")
        elif name in answers:
            self.log(f"round {round}: two sites are named {name!r}; the second is left out (give each --name)")
        else:
            answers[name] = reply

    def _describe(self, reply: Message, kind: str, round: int, name: str) -> None:
        """Append what this message carried to ``messages.jsonl`` (the wire audit)."""
        records = {}
        for key, record in reply.content.items():
            if isinstance(record, ArrayRecord):
                records[key] = {"arrays": {k: [a.dtype, list(a.shape)] for k, a in record.items()},
                                "bytes": int(record.count_bytes())}
            else:
                records[key] = {k: v for k, v in record.items()}
        line = json.dumps({"round": round, "kind": kind, "site": name, "records": records}, default=str)
        with open(self.out / "federated" / "messages.jsonl", "a", encoding="utf-8") as file:
            file.write(line + "\n")


def _plain(config) -> dict:
    return json.loads(json.dumps(asdict(config)))


def _config(raw: dict):
    from medlens.config import config_from_dict

    return config_from_dict(raw, where="the federation's state")


def _site_record(name: str, state: dict) -> dict:
    """What the run folder says about a site: rounds it took part in, training cases, DP spent (last round)."""
    rounds = [record for record in state["history"] if name in record["sites"]]
    last = rounds[-1]["sites"][name] if rounds else {}
    privacy = (last["dp_epsilon"], last["dp_delta"]) if "dp_epsilon" in last else None
    return {"rounds": [record["round"] for record in rounds], "n_examples": last.get("n_examples"),
            "privacy": privacy, "counts": state["summaries"][name].get("counts")}
