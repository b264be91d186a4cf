"""Sequential seeds on Ray Tune: a Searcher that hands out a grid point's next seed when the
analysis of what has finished asks for it.

With `seeds: {start, max}` the Tuner gets no grid: this Searcher suggests every point's first
`start` seeds, then, each time a trial finishes, reads the finished runs, asks the sequential
analysis (sequential.py) which comparisons are still undecided, and queues the next seed of each
point those comparisons need, as long as that point has no trial waiting or running and has seeds
left. Points of decided comparisons get no more seeds. When nothing is queued or running and the
analysis wants nothing more, it tells Tune the sweep is finished. `max_concurrent` is Tune's
ConcurrencyLimiter around it; resources are the trainable's, as for a grid.

Its state is plain data (Tune pickles it into the sweep's state and restores it with `--resume`);
what has finished is always read back from the run folders, never kept twice.
"""

from __future__ import annotations

from pathlib import Path

from ray.tune.search import Searcher

from b6lab.sweep.grid import SEED_KEY, Experiment, point_key


class SeedSearcher(Searcher):
    def __init__(self, exp: Experiment, run_dirs: dict[str, str]):
        super().__init__(metric=exp.metric, mode="min")
        points: list[dict] = [{}]
        for axis in exp.grid:
            points = [point | {axis.key: value} for point in points for value in axis.values]
        self.points = points  # the grid points, without their seed
        self.labels = [{axis.key: axis.label(point[axis.key]) for axis in exp.grid} for point in points]
        self.seeds = list(exp.seeds)
        self.start = exp.sequential.start
        self.equivalence = exp.sequential.equivalence
        self.metric_name = exp.metric
        self.run_dirs = run_dirs  # point_key(point with seed) -> its run folder
        self.handed = [self.start] * len(points)  # seeds handed out so far, per point
        self.queue = [(i, s) for s in range(self.start) for i in range(len(points))]  # seed-major: pairs complete early
        self.running: dict[str, tuple[int, int]] = {}  # trial id -> (point, seed index)
        self.looks: list[dict] = []  # each analysis: the trials finished, and what it still wanted

    # Tune's side

    def suggest(self, trial_id: str):
        if not self.queue and not self.running:
            self._plan()
        if not self.queue:
            return None if self.running else Searcher.FINISHED
        point, seed = self.queue.pop(0)
        self.running[trial_id] = (point, seed)
        return self.points[point] | {SEED_KEY: self.seeds[seed]}

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        self.running.pop(trial_id, None)
        self._plan()

    # The analysis

    def _plan(self) -> None:
        from b6lab.sweep.folders import read_run
        from b6lab.sweep.sequential_sweep import points_needing_seeds
        from b6lab.train.run_folder import holds_run

        finished = {}
        busy = {point for point, _ in self.running.values()} | {point for point, _ in self.queue}
        for point in range(len(self.points)):
            for seed in range(self.handed[point]):
                folder = Path(self.run_dirs[self._key(point, seed)])
                if holds_run(folder):
                    run = read_run(folder)
                    if run.status != "incomplete":
                        finished[point, seed] = run
        pending = set(self.running.values()) | set(self.queue)
        wanted = points_needing_seeds(self.labels, self.seeds, finished, self.start, len(self.seeds),
                                      self.equivalence, self.metric_name, self.handed, pending)
        added = []
        for point in sorted(wanted):
            if point not in busy and self.handed[point] < len(self.seeds):
                self.queue.append((point, self.handed[point]))
                self.handed[point] += 1
                added.append(point)
        self.looks.append({"finished": len(finished), "wanted": sorted(wanted), "added": added})

    def _key(self, point: int, seed: int) -> str:
        return point_key(self.points[point] | {SEED_KEY: self.seeds[seed]})

    def save(self, checkpoint_path: str) -> None:
        import pickle

        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__dict__, f)

    def restore(self, checkpoint_path: str) -> None:
        import pickle

        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))
