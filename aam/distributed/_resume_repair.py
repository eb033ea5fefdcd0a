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
    LIVE_STATUSES,
    RESULT_FILE,
    catch_up_searcher,
    experiment_states,
    result_line,
    search_state_trials,
    search_states,
    searcher_states,
    session_files,
    set_search_state_trials,
)
from aam.distributed.state_signature import sign_state, verified_private_copy
from aam.errors import AamUserError
from aam.search import SPACE_FILE, TIME_ATTR, cut_short_state, recorded_trials, result_rows, unrecorded_trials

UNRECORDED_DIR = "unrecorded"  # what a resume sets aside: kept for the user, out of Tune's way
RESULTS_ASIDE = "results"  # in UNRECORDED_DIR: a trial's result.json as it was before epochs were taken out


def mend_killed_experiment(experiment: Path) -> Path:
    """Make a local experiment folder one that Tune resumes correctly, and return the private,
    verified copy of its state that Tune is to restore from (`pinned_state_filesystem`).

    After it: the newest set of Tune's state files is whole, every pickle in it was signed by
    this user's aam (checked on the bytes of the private copy, which are the bytes unpickled here
    and by `Tuner.restore`), every trial folder is one Tune recorded, the search generator
    counts exactly those trials, the searcher knows them, and each trial's result.json holds the
    epochs the state records.
    """
    _set_aside_cut_short_state(experiment)
    private = verified_private_copy(experiment)
    records = recorded_trials(experiment)
    if records is not None:
        _set_aside_unrecorded(experiment, set(records))
        _reconcile_search_state(experiment, private, records)
        _catch_up_searcher(experiment, private, records)
        _match_results_to_state(experiment, records)
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


def _reconcile_search_state(experiment: Path, private: Path, records: dict[str, dict]) -> None:
    """Make Tune's search-generator snapshot agree with its experiment state on which trials exist.

    Tune writes the two in one save but copies them to the storage path in the background, file
    by file, while the next save may already rewrite them, so a killed driver can leave a
    generator that counted a trial the experiment state never listed. Resumed as they are, the
    search would run fewer trials than num_samples, and the concurrency limiter would hold a slot
    for that trial for the rest of the search; a generator a save behind the state leaves out of
    the limiter a recorded trial Tune continues, whose end the limiter then never passes on to the
    searcher. Rewritten here, the generator's count is the recorded trials and the limiter's live
    trials are the recorded ones Tune continues.
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
    continued = {trial_id for trial_id, record in records.items() if record["status"] in LIVE_STATUSES}
    if counter == len(records) and (live is None or live == continued):
        return
    set_search_state_trials(state, newest, limited, set(records), continued)
    _write_snapshot(experiment, private, newest, cloudpickle.dumps(state))


def _write_snapshot(experiment: Path, private: Path, snapshot: Path, mended: bytes) -> None:
    """A mended state snapshot, in the experiment and in the private copy Tune restores from, signed."""
    atomic_write(snapshot, mended)
    atomic_write(private / snapshot.name, mended)
    sign_state(experiment, experiment, [snapshot.name])


def _catch_up_searcher(experiment: Path, private: Path, records: dict[str, dict]) -> None:
    """Make Tune's searcher snapshot know every trial its experiment state records, and the
    score of each finished one.

    The same background copy that can leave the search generator a save behind can leave the
    searcher's snapshot behind the experiment state. Resumed as it is, the searcher fails on
    the first result of a recorded trial it never sampled (OptunaSearch raised KeyError on its
    trial id), and Optuna never learns the scores of the trials that finished after it.
    """
    import pickle

    from aam.search import quiet_optuna

    snapshots = searcher_states(experiment)
    if not snapshots:
        return
    newest = snapshots[-1]
    # the verified copy's bytes, as in _reconcile_search_state; Tune reads this file with pickle
    state = pickle.loads((private / newest.name).read_bytes())
    with quiet_optuna():
        given, scored = catch_up_searcher(state, newest, records)
    if not (given or scored):
        return
    _write_snapshot(experiment, private, newest, pickle.dumps(state))
    said = []
    if given:
        said.append(f"{_trials(given)} in Tune's experiment state but not in its searcher's snapshot, copied before "
                    f"them when the search was stopped: given to the searcher with their sampled values")
    if scored:
        said.append(f"the searcher told the scores of {_trials(scored)}, which finished after its snapshot")
    print("; ".join(said), flush=True)


def _trials(ids: list[str]) -> str:
    return ", ".join(f"trial_{i}" for i in ids)


def _match_results_to_state(experiment: Path, records: dict[str, dict]) -> None:
    """Make each recorded trial's result.json hold the epochs Tune's experiment state says it
    reported: no fewer, no more.

    Tune's driver writes result.json in a staging folder and copies it into the experiment with
    the state, in the background, file by file: a driver killed mid-copy can leave the two from
    different saves. A state ahead of the file records a finished trial whose last epoch the file
    lacks, and Tune never runs a finished trial again; it is put back from the state's copy of
    that result. A state behind the file restarts a trial from an earlier checkpoint, and the
    epochs after it would be written twice; they are taken out (the old file is kept aside).
    """
    for trial_id, record in records.items():
        file = experiment / f"trial_{trial_id}" / RESULT_FILE
        if not file.is_file():
            continue
        old = file.read_bytes()
        lines = [(row[TIME_ATTR], line) for row, line in result_rows(old.decode(errors="replace"))
                 if isinstance(row.get(TIME_ATTR), int)]
        reported = record["last_result"].get(TIME_ATTR) or 0
        kept = [(epoch, line) for epoch, line in lines if epoch <= reported]
        have = kept[-1][0] if kept else 0
        if have < reported:
            kept.append((reported, result_line(record["last_result"])))
        if kept == lines:
            continue
        if len(kept) < len(lines):
            aside = experiment / UNRECORDED_DIR / RESULTS_ASIDE
            aside.mkdir(parents=True, exist_ok=True)
            atomic_write(aside / f"{file.parent.name}.json", old)
        atomic_write(file, "".join(line + "\n" for _, line in kept))
        print(f"{file.parent.name}: {_what_changed(lines, kept, have, reported)}", flush=True)


def _what_changed(lines: list[tuple[int, str]], kept: list[tuple[int, str]], have: int, reported: int) -> str:
    said = []
    dropped = sorted({epoch for epoch, _ in lines} - {epoch for epoch, _ in kept})
    if dropped:
        said.append(f"epochs {_span(dropped)} of its result.json come after the last one Tune's state records, "
                    f"which Tune resumes it from: taken out, as Tune runs them again (the old file is in "
                    f"{UNRECORDED_DIR}/{RESULTS_ASIDE}/)")
    if have < reported:
        said.append(f"its result.json lacked epoch {reported}, which Tune's state records (the stop cut the file's "
                    f"copy short); put back from the state")
        if reported - have > 1:
            said.append(f"epochs {_span(list(range(have + 1, reported)))} are lost from its curve")
    return "; ".join(said)


def _span(epochs: list[int]) -> str:
    return str(epochs[0]) if len(epochs) == 1 else f"{epochs[0]}-{epochs[-1]}"


def _limits_concurrency(experiment: Path) -> bool:
    """Whether the search set max_concurrent_trials, for which Tune keeps a concurrency limiter."""
    space = yaml.safe_load((experiment / SPACE_FILE).read_text())
    return bool(space["tune"]["max_concurrent_trials"])
