"""Before `aam tune --resume`: undo what a killed driver left half-done in Ray Tune's own files.

One entry point, `mend_killed_experiment`. Tune's files are read and rewritten through
`aam._ray_internals`, which knows their layout (which files one driver session writes, the trials
the experiment state records, the search generator's counter and concurrency limiter) and fails in
one line when a Ray release has moved it.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from aam._files import atomic_write
from aam._ray_internals import (
    experiment_states,
    search_state_trials,
    search_states,
    session_files,
    set_search_state_trials,
)
from aam.distributed.state_signature import sign_state, verified_private_copy
from aam.errors import AamUserError
from aam.search import SPACE_FILE, cut_short_state, recorded_trial_ids, unrecorded_trials

UNRECORDED_DIR = "unrecorded"  # what a resume sets aside: kept for the user, out of Tune's way


def mend_killed_experiment(experiment: Path) -> Path:
    """Make a local experiment folder one that Tune resumes correctly, and return the private,
    verified copy of its state that Tune is to restore from (`pinned_state_filesystem`).

    After it: the newest set of Tune's state files is whole, every pickle in it was signed by
    this user's aam (checked on the bytes of the private copy, which are the bytes unpickled here
    and by `Tuner.restore`), every trial folder is one Tune recorded, and the search generator
    counts exactly those trials.
    """
    _set_aside_cut_short_state(experiment)
    private = verified_private_copy(experiment)
    recorded = recorded_trial_ids(experiment)
    if recorded is not None:
        _set_aside_unrecorded(experiment, recorded)
        _reconcile_search_state(experiment, private, recorded)
    return private


def _move_aside(experiment: Path, paths: list[Path]) -> Path:
    """Out of Tune's and `aam runs`' way, kept for the user to look at: nothing is deleted."""
    aside = experiment / UNRECORDED_DIR
    aside.mkdir(exist_ok=True)
    for path in paths:
        path.rename(aside / path.name)
    return aside


def _set_aside_cut_short_state(experiment: Path) -> None:
    """Roll back to the previous session's snapshot when the newest was cut short mid-write.

    Tune resumes from the newest snapshot of each kind (experiment state, searcher, search
    generator, callbacks: one set per driver session), and from a truncated experiment state it
    does not resume correctly (it may start trials a finished search does not need). Moving the
    whole set of that session aside keeps the four consistent.
    """
    cut = cut_short_state(experiment)
    if cut is None:
        return
    earlier = experiment_states(experiment)[:-1]
    if not earlier:
        raise AamUserError(
            f"--resume {experiment}: Tune's experiment state {cut.name} was cut short (the search was killed while "
            f"writing it) and there is no earlier one to resume from; start the search again under a new --name "
            f"(`aam runs {experiment}` still lists its trials)"
        )
    aside = _move_aside(experiment, session_files(cut))
    print(f"{cut.name} was cut short when the search was stopped: resuming from the snapshot before it "
          f"({earlier[-1].name}); that session's state files moved to {aside}", flush=True)


def _set_aside_unrecorded(experiment: Path, recorded: set[str]) -> None:
    """Move trial folders the killed driver never recorded out of the experiment's trials.

    Tune will not continue them, so left in place they would read as trials that never finish
    (`aam runs`) and the search would seem to hold more trials than it ran.
    """
    trials = unrecorded_trials(experiment, recorded)
    if not trials:
        return
    aside = _move_aside(experiment, [t.path for t in trials])
    described = ", ".join(f"{t.path.name} ({t.epochs_done} epoch{'' if t.epochs_done == 1 else 's'})" for t in trials)
    print(f"{described}: started just before the search was stopped but not yet in Tune's "
          f"experiment state, so Tune cannot continue them; moved to {aside}, Tune samples their places again",
          flush=True)


def _reconcile_search_state(experiment: Path, private: Path, recorded: set[str]) -> None:
    """Make Tune's search-generator snapshot agree with its experiment state on which trials exist.

    Tune writes the two in one save but copies them to the storage path in the background, file
    by file, while the next save may already rewrite them, so a killed driver can leave a
    generator that counted a trial the experiment state never listed. Resumed as they are, the
    search would run fewer trials than num_samples, and the concurrency limiter would hold a slot
    for that trial for the rest of the search. Rewritten here, the generator's count is the
    recorded trials and the limiter's live trials are recorded ones only.
    """
    import ray.cloudpickle as cloudpickle

    snapshots = search_states(experiment)
    if not snapshots:
        return
    newest = snapshots[-1]
    # the verified copy's bytes: the file in the experiment may have been swapped since the check
    state = cloudpickle.loads((private / newest.name).read_bytes())
    limited = _limits_concurrency(experiment)
    counter, live = search_state_trials(state, newest, limited)
    if counter == len(recorded) and (live is None or live <= recorded):
        return
    set_search_state_trials(state, newest, limited, recorded)
    mended = cloudpickle.dumps(state)
    atomic_write(newest, mended)
    atomic_write(private / newest.name, mended)  # what Tune restores from
    sign_state(experiment, experiment, [newest.name])


def _limits_concurrency(experiment: Path) -> bool:
    """Whether the search set max_concurrent_trials, for which Tune keeps a concurrency limiter."""
    space = yaml.safe_load((experiment / SPACE_FILE).read_text())
    return bool(space["tune"]["max_concurrent_trials"])
