"""`aec train-rl FILE`: train the telescope RL scheduler of a campaign file (its `policy: {kind: rl}` section).

Online (default): simulated nights of the file's telescope instrument, evaluated every few episodes on
held-out nights, a checkpoint after every episode in the training store (STORE.data/rl-step-*.pt, written
atomically); run it again on the same store and it continues from the latest checkpoint, after a kill -9
too. Offline (`--offline CAMPAIGN_STORE`, repeatable): learn from recorded campaigns' journals with CQL.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

from controller.errors import UserError

STORE_KIND = "rl-training"


def add_parser(sub: Any, add_common: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser("train-rl", help="train the telescope RL scheduler of a campaign file (policy: {kind: rl})")
    p.add_argument("file", help="campaign file with a telescope simulator instrument and policy kind rl")
    p.add_argument("--store", help="training store (default: the policy's checkpoint path); resumes when it exists")
    p.add_argument("--offline", action="append", metavar="CAMPAIGN_STORE",
                   help="learn offline (CQL) from this recorded campaign's journal instead of simulating; repeatable")
    p.add_argument("--episodes", type=int, help="override policy.train.episodes")
    add_common(p)
    p.set_defaults(run_command=run)


def _training_setup(path: Path, episodes: int | None) -> tuple[Any, dict[str, Any], Any]:
    """(campaign config, simulator options, RLPolicy.Options) of a campaign file, checked as train-rl needs them."""
    from controller.config import read_campaign_file, validate_config
    from policies import PolicyConfigError, validate_options

    cfg = validate_config(read_campaign_file(path), base_dir=path.parent, source=str(path))
    inst = cfg.instrument
    if inst.kind != "simulator" or getattr(inst, "name", "") != "telescope":
        raise UserError(f"{path}: instrument: train-rl needs {{kind: simulator, name: telescope}}")
    if cfg.policy.kind != "rl":
        raise UserError(f"{path}: policy.kind: train-rl trains 'rl' policies, the file has {cfg.policy.kind!r}")
    raw = cfg.policy.options()
    if episodes is not None:
        if episodes < 1:
            raise UserError(f"{path}: --episodes: expected an integer >= 1, got {episodes}")
        raw = {**raw, "train": {**raw.get("train", {}), "episodes": episodes}}
    try:
        options = validate_options("rl", raw)
    except PolicyConfigError as exc:
        raise UserError(f"{path}: policy", [f"{path}: policy.{p}: {m}" for p, m in exc.errors]) from None
    sim_options = {**dict(getattr(inst, "options", None) or {}), **(options.simulator or {})}
    sim_options.setdefault("seed", cfg.seed)
    return cfg, sim_options, options


def _open_training_store(path: Path, identity: dict[str, Any]) -> Any:
    """The training store at `path` (created when missing); refuses a campaign's store or other options."""
    from controller.store import Store

    if not path.exists():
        return Store(path, create=True, meta={"kind": STORE_KIND, "rl_identity": identity})
    store = Store(path, writer=True)
    if store.get_meta("kind") != STORE_KIND:
        store.close()
        raise UserError(f"{path}: not an RL training store (a campaign's store?); give another --store")
    if store.get_meta("rl_identity") != identity:
        store.close()
        raise UserError(f"{path}: was trained with other simulator or agent options; give a new --store "
                        "(only train.episodes, eval_every and offline_updates may change between runs)")
    return store


def _identity(sim_options: dict[str, Any], train: Any) -> dict[str, Any]:
    keep = train.model_dump(exclude={"episodes", "eval_every", "offline_updates"})
    return json.loads(json.dumps({"simulator": sim_options, "train": keep}, default=str))


def _say(args: argparse.Namespace, text: str) -> None:
    if not (args.quiet or args.json):
        print(text, file=sys.stderr, flush=True)


def _score_line(score: Any) -> str:
    return (f"held-out nights: reward/night {score.total_reward_mean:.1f} +- {score.total_reward_std:.1f}, "
            f"{100 * score.fraction_of_max_reward:.1f}% of the max reward per step (oracle), "
            f"{100 * score.fraction_of_max_reward_fair:.1f}% (fair), slew {100 * score.slew_fraction:.1f}%")


def run(args: argparse.Namespace) -> int:
    from policies.rl import checkpoint as ckpt

    path = Path(args.file)
    cfg, sim_options, options = _training_setup(path, args.episodes)
    store_path = Path(args.store or options.checkpoint).expanduser()
    t0 = time.time()
    try:
        if args.offline:
            result = _offline(args, path, sim_options, options.train, store_path)
        else:
            result = _online(args, sim_options, options.train, store_path)
    except ckpt.CheckpointError as exc:
        raise UserError(str(exc)) from None
    result["seconds"] = round(time.time() - t0, 2)
    if args.json:
        print(json.dumps(result))
    elif not args.quiet:
        print(f"trained: {result['checkpoint']} ({result['steps']} decisions, {result['episodes']} episodes, "
              f"{result['seconds']:.0f} s)")
    return 0


def _online(args: argparse.Namespace, sim_options: dict[str, Any], train: Any, store_path: Path) -> dict[str, Any]:
    from policies.rl import checkpoint as ckpt
    from policies.rl.agent import OnlineTrainer
    from simulators import SimulatorError

    store = _open_training_store(store_path, _identity(sim_options, train))
    try:
        found = ckpt.list_checkpoints(store_path)
        resume = ckpt.load(found[-1]) if found else None
        replay_path = ckpt.checkpoint_dir(store_path) / REPLAY_FILE
        if resume is not None and train.save_replay:
            memory = _load_replay(replay_path, resume)
            if memory is None and int(resume["episode"]) > 0:
                _say(args, f"note: no replay memory saved with {resume['path']}: the replay memory starts empty")
            resume["replay"] = memory
        try:
            trainer = OnlineTrainer(sim_options, train, resume=resume)
        except SimulatorError as exc:
            raise UserError(f"{args.file}: instrument.options: {exc}") from None
        except ValueError as exc:  # a replay memory of another shape: a damaged or foreign replay.pt
            raise UserError(f"{replay_path}: {exc}; delete it to resume with an empty replay memory") from None
        if resume is not None:
            _say(args, f"resuming {store_path} at search generation {trainer.generation} of {trainer.generations}, "
                       f"episode {trainer.episode} of {train.episodes} ({resume['path']}; "
                       f"{trainer.replay_restored} transitions in the replay memory)")
        latest = found[-1] if found else None
        total = trainer.generations + train.episodes
        with _Progress(args, total, trainer.generation + trainer.episode) as bar:
            while not trainer.finished:
                searching = trainer.searching
                info = trainer.run_episode(on_step=lambda: bar.night(trainer))
                if searching:
                    line = (f"search generation {info['generation']}/{trainer.generations}: reward/night of the mean "
                            f"weights {info['reward_mean']:.1f}, best candidate {info['reward_best']:.1f}")
                    evaluate = not trainer.searching
                else:
                    line = (f"episode {info['episode']}/{train.episodes}: reward/night {info['reward_mean']:.1f}, "
                            f"epsilon {info['epsilon']:.2f}, loss {info['loss']:.3f}")
                    evaluate = trainer.episode % train.eval_every == 0 or trainer.episode == train.episodes
                if evaluate:
                    line += "; " + _score_line(trainer.evaluate())
                if train.save_replay and not searching:  # before the checkpoint that names its step count
                    ckpt.save(replay_path, {"steps": trainer.steps, "replay": trainer.replay.state()})
                latest = ckpt.save(ckpt.checkpoint_dir(store_path) / ckpt.checkpoint_name(trainer.steps), trainer.payload())
                store.set_meta("rl_latest", latest.name)
                store.set_meta("rl_evaluations", trainer.evaluations)
                bar.done_episode(trainer.generation + trainer.episode, line)
        return {"store": str(store_path), "checkpoint": str(latest), "episodes": trainer.episode,
                "generations": trainer.generation,
                "steps": trainer.steps, "evaluations": trainer.evaluations}
    finally:
        store.close()


def _offline(args: argparse.Namespace, path: Path, sim_options: dict[str, Any], train: Any,
             store_path: Path) -> dict[str, Any]:
    from controller.store import Store
    from policies.rl import checkpoint as ckpt
    from policies.rl.offline import LoggedTrial, OfflineDataError, train_offline

    runs = []
    for source in args.offline:
        with Store(source) as recorded:
            done = [r for r in recorded.trials() if r.status == "completed" and r.pool_index is not None]
            done.sort(key=lambda r: (r.finished_seq or 0, r.id))
            runs.append([LoggedTrial(int(r.pool_index), dict(r.metrics)) for r in done])
    _say(args, f"offline: {sum(len(r) for r in runs)} logged trials from {len(runs)} campaign store(s)")
    store = _open_training_store(store_path, {**_identity(sim_options, train), "offline": True})
    try:
        with _Progress(args, 1, 0) as bar:
            count = [0]

            def tick() -> None:
                count[0] += 1
                if count[0] % 50 == 0:
                    bar.fraction(count[0] / train.offline_updates)
            try:
                payload, score = train_offline(sim_options, runs, train, on_update=tick)
            except OfflineDataError as exc:
                raise UserError(f"{', '.join(args.offline)}: {exc}") from None
            step = len(ckpt.list_checkpoints(store_path))
            latest = ckpt.save(ckpt.checkpoint_dir(store_path) / ckpt.checkpoint_name(step), payload)
            store.set_meta("rl_latest", latest.name)
            store.set_meta("rl_evaluations", payload["evaluations"])
            bar.done_episode(1, "offline (CQL): " + _score_line(score))
        return {"store": str(store_path), "checkpoint": str(latest), "episodes": 0,
                "steps": payload["config"]["offline_transitions"], "evaluations": payload["evaluations"]}
    finally:
        store.close()


REPLAY_FILE = "replay.pt"


def _load_replay(path: Path, resume: dict[str, Any]) -> dict[str, Any] | None:
    """The replay memory saved with the checkpoint `resume` (same step count), or None when there is none
    (a run before the first DQN episode, or killed between writing the two files)."""
    from policies.rl import checkpoint as ckpt

    if not path.is_file():
        return None
    try:
        saved = ckpt.load(path)
    except ckpt.CheckpointError as exc:
        raise UserError(f"{exc}; delete it to resume with an empty replay memory") from None
    return saved["replay"] if int(saved.get("steps", -1)) == int(resume["steps"]) else None


class _Progress:
    """A rich progress bar on a terminal; otherwise one line per episode on stderr (nothing with --quiet/--json)."""

    def __init__(self, args: argparse.Namespace, total: int, done: int):
        self.args, self.total, self.bar, self.task = args, total, None, None
        self.done = done
        if not (args.quiet or args.json) and sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("train-rl"), BarColumn(),
                                TextColumn("{task.completed:.1f}/{task.total} episodes"), TimeElapsedColumn(),
                                TimeRemainingColumn(), console=Console(stderr=True))

    def __enter__(self) -> "_Progress":
        if self.bar is not None:
            self.bar.start()
            self.task = self.bar.add_task("train", total=self.total, completed=self.done)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.bar is not None:
            self.bar.stop()

    def fraction(self, value: float) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=self.done + min(1.0, value))

    def night(self, trainer: Any) -> None:
        """Progress within an episode: how far the simulated nights are through their darkness."""
        if self.bar is not None:
            b = trainer.env.batch
            share = float(((b.now - b.evening) / (b.morning - b.evening)).clamp(0, 1).mean())
            self.bar.update(self.task, completed=self.done + share)

    def done_episode(self, episode: int, line: str) -> None:
        self.done = episode
        if self.bar is not None:
            self.bar.update(self.task, completed=episode)
            self.bar.console.print(line)
        else:
            _say(self.args, line)
