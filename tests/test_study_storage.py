"""Optuna's SQLite storage as ``fastnas tune`` opens it: concurrent workers never pop the same
enqueued trial (the race behind "Cannot tell a COMPLETE trial", optuna/optuna#4621)."""
import multiprocessing
import os
import sys

import optuna

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _pop_all(url, queue, attempts):
    sys.path.insert(0, REPO)
    from fastnas.tune.study import open_storage

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.load_study(study_name="race", storage=open_storage(url))
    popped = []
    for _ in range(attempts):
        trial_id = study._pop_waiting_trial_id()
        if trial_id is not None:
            popped.append(trial_id)
    queue.put(popped)


def test_concurrent_workers_pop_each_enqueued_trial_once(tmp_path):
    from fastnas.tune.study import open_storage

    url = f"sqlite:///{tmp_path}/race.db"
    study = optuna.create_study(study_name="race", storage=open_storage(url))
    for i in range(60):
        study.enqueue_trial({"x": i})
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    workers = [ctx.Process(target=_pop_all, args=(url, queue, 40)) for _ in range(3)]
    for w in workers:
        w.start()
    popped = [queue.get(timeout=120) for _ in workers]
    for w in workers:
        w.join(timeout=60)
    every = sorted(t for p in popped for t in p)
    assert len(every) == len(set(every)) == 60, popped
