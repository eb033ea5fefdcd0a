"""aam._files: output folders aam may replace, checksums, loading without running code, work folders."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from aam._files import OUTPUT_MARKER, atomic_write, check_output_folder, foreign_files, load_torch, mark_output, replacing_folder, save_torch
from aam.errors import AamUserError


def user_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "thesis.txt").write_text("years of work")
    return folder


def test_force_never_replaces_a_folder_aam_did_not_mark(tmp_path, folder_hash):
    folder = user_folder(tmp_path)
    before = folder_hash(folder)
    with pytest.raises(AamUserError, match="not empty; choose a new folder or pass --force"):
        check_output_folder(folder, "run", force=False)
    with pytest.raises(AamUserError, match="replaces only a run folder that aam wrote.*aam did not write it"):
        check_output_folder(folder, "run", force=True)
    mark_output(folder, "dataset")
    with pytest.raises(AamUserError, match="aam wrote it as a dataset"):
        check_output_folder(folder, "run", force=True)
    (folder / OUTPUT_MARKER).unlink()
    assert folder_hash(folder) == before


def test_force_replaces_a_folder_aam_marked_as_the_same_kind(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "model.pt").write_bytes(b"old")
    mark_output(folder, "run", written=["model.pt"])
    assert check_output_folder(folder, "run", force=True) is True
    assert check_output_folder(tmp_path / "new", "run", force=False) is False


def test_force_refuses_a_marked_folder_that_holds_files_the_marker_does_not_list(tmp_path, folder_hash):
    # issue 23: `echo run > D/.aam-output; aam train --out D --force` deleted every file of D
    forged = user_folder(tmp_path)
    (forged / OUTPUT_MARKER).write_text("run\n")
    with pytest.raises(AamUserError, match=r"it also holds thesis.txt \(not listed"):
        check_output_folder(forged, "run", force=True)
    run = tmp_path / "run"
    with replacing_folder(run, replace=False):  # as `aam train` writes a run
        (run / "samples").mkdir(parents=True)
        mark_output(run, "run")
        (run / "model.pt").write_bytes(b"weights")
        (run / "samples" / "train.txt").write_text("s1\n")
    assert check_output_folder(run, "run", force=True) is True
    (run / "samples" / "my-notes.txt").write_text("added by the user")
    before = folder_hash(run)
    with pytest.raises(AamUserError, match="also holds samples/my-notes.txt"):
        check_output_folder(run, "run", force=True)
    assert folder_hash(run) == before


def test_a_run_that_fails_still_lists_what_it_wrote_but_not_what_was_there(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "mine.txt").write_text("the user's")
    mark_output(run, "run")
    with pytest.raises(RuntimeError):
        with replacing_folder(run, replace=False):  # continuing in place, as --resume-from does
            (run / "state.pt").write_bytes(b"state")
            raise RuntimeError("workers died")
    assert foreign_files(run) == ["mine.txt"]


@pytest.mark.parametrize("out, relation", [("data", "is"), ("data/run", "is inside"), (".", "contains")])
def test_an_output_that_is_inside_or_contains_an_input_is_refused(tmp_path, out, relation, folder_hash):
    data = tmp_path / "data"
    data.mkdir()
    (data / "samples.parquet").write_bytes(b"rows")
    mark_output(data, "run")  # even a folder aam marked: it is this command's input
    before = folder_hash(tmp_path)
    with pytest.raises(AamUserError, match=f"it {relation} the input --data"):
        check_output_folder(tmp_path / out, "run", force=True, inputs={"--data": str(data)})
    assert folder_hash(tmp_path) == before


def test_a_failed_replacement_puts_the_old_folder_back(tmp_path, folder_hash):
    folder = tmp_path / "run"
    folder.mkdir()
    mark_output(folder, "run")
    (folder / "model.pt").write_bytes(b"old weights")
    before = folder_hash(folder)
    with pytest.raises(RuntimeError):
        with replacing_folder(folder, replace=True) as out:
            out.mkdir()
            (out / "half.pt").write_bytes(b"half")
            raise RuntimeError("training failed")
    assert folder_hash(folder) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_a_checkpoint_with_a_pickle_payload_is_refused_and_never_runs(tmp_path, runs_code):
    marker = tmp_path / "code-ran"
    file = tmp_path / "model.pt"
    torch.save({"format": "aam-model/1", "config": runs_code(marker)}, file)
    with pytest.raises(AamUserError) as error:
        load_torch(file, "aam model")
    assert not marker.exists()
    message = str(error.value)
    assert "\n" not in message and str(file) in message and "could run code" in message
    torch.load(file, weights_only=False)  # the payload is real: an unrestricted load runs it
    assert marker.exists()


def test_a_corrupted_checkpoint_is_one_line_naming_it(tmp_path):
    file = tmp_path / "state.pt"
    save_torch({"epoch": 3, "weights": torch.randn(64, 64)}, file)
    assert load_torch(file)["epoch"] == 3
    data = bytearray(file.read_bytes())
    data[1000:1256] = os.urandom(256)
    file.write_bytes(bytes(data))
    with pytest.raises(AamUserError) as error:
        load_torch(file)
    message = str(error.value)
    assert "\n" not in message and str(file) in message and "state.pt.sha256" in message


def test_a_checkpoint_without_a_checksum_still_loads_with_a_note(tmp_path, capsys):
    file = tmp_path / "model.pt"
    torch.save({"epoch": 1}, file)  # as an aam from before checksums wrote it
    assert load_torch(file) == {"epoch": 1}
    assert "has no model.pt.sha256 beside it" in capsys.readouterr().err


WORK_SCRIPT = """
import sys, time
from aam._files import exit_on_sigterm, work_folder
exit_on_sigterm()
folder = work_folder("aam-run-")
(folder / "state.pt").write_bytes(b"x")
print(folder, flush=True)
if sys.argv[1] == "raise":
    raise RuntimeError("boom")
if sys.argv[1] == "wait":
    time.sleep(60)
"""


@pytest.mark.parametrize("ending", ["return", "raise", "sigterm"])
def test_work_folders_are_removed_however_the_process_ends(tmp_path, ending):
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    process = subprocess.Popen([sys.executable, "-c", WORK_SCRIPT, "wait" if ending == "sigterm" else ending],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    folder = Path(process.stdout.readline().strip())
    assert folder.parent == tmp_path and folder.name.startswith("aam-run-")
    if ending == "sigterm":
        assert folder.is_dir()
        process.send_signal(signal.SIGTERM)
    process.wait(timeout=60)
    assert process.returncode == {"return": 0, "raise": 1, "sigterm": 128 + signal.SIGTERM}[ending]
    assert not folder.exists()


def test_atomic_write_replaces_whole_and_leaves_no_temp_file(tmp_path):
    target = tmp_path / "out.tsv"
    atomic_write(target, "old\n")
    atomic_write(target, b"new\n")
    assert target.read_bytes() == b"new\n"
    assert [p.name for p in tmp_path.iterdir()] == ["out.tsv"]
    assert target.stat().st_mode & 0o777 == 0o666 & ~_current_umask()


def test_atomic_write_that_fails_leaves_the_old_file_and_no_temp_file(tmp_path):
    target = tmp_path / "out.tsv"
    target.write_text("old")
    with pytest.raises(TypeError):
        atomic_write(target, 5)  # not bytes: fails after the temp file exists
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.tsv"]


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


HOLD_LOCK = """
import sys, time
from pathlib import Path
from aam._files import driver_lock
with driver_lock(Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(120)
"""


def hold_lock(folder: Path) -> subprocess.Popen:
    """Another process holding `folder`'s lock, as a running `aam tune` driver does."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(folder)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_one_driver_per_folder_and_a_killed_drivers_lock_is_taken_over(tmp_path, capsys):
    import socket

    from aam._files import driver_lock

    experiment = tmp_path / "storage" / "w"
    holder = hold_lock(experiment)
    try:
        with pytest.raises(AamUserError, match=f"being run by process {holder.pid} on {socket.gethostname()}"):
            with driver_lock(experiment):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)  # no exit handler runs: its record stays in the file
        holder.wait()
    with driver_lock(experiment) as lock:
        assert f"took over from process {holder.pid}" in capsys.readouterr().err
        assert f'"pid": {os.getpid()}' in lock.read_text()
    with driver_lock(experiment):  # a lock let go cleanly is taken without a note
        assert "took over" not in capsys.readouterr().err


def test_a_lock_named_by_a_process_on_another_host_is_refused_with_how_to_clear_it(tmp_path):
    from aam._files import driver_lock

    experiment = tmp_path / "w"
    lock = tmp_path / ".w.aam-lock"
    lock.write_text('{"pid": 1, "host": "another-host.example"}')
    with pytest.raises(AamUserError, match=f"process 1 on another-host.example.*delete {lock}"):
        with driver_lock(experiment):
            pass


def test_stale_work_folders_of_dead_processes_go_and_nothing_else(tmp_path):
    from aam._files import remove_stale_work_folders

    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(ended.stdout)
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        names = [f"aam-run-{dead}-a", f"aam-ckpt-{dead}-b", f"aam-run-{alive.pid}-c", f"aam-run-{os.getpid()}-d",
                 f"aam-other-{dead}-e", "aam-run-abc", "notes"]
        for name in names:
            (tmp_path / name).mkdir()
            (tmp_path / name / "f").write_text("x")
        (tmp_path / f"aam-run-{dead}-file").write_text("a file, not a work folder")
        removed = remove_stale_work_folders(tmp_path)
    finally:
        alive.kill()
        alive.wait()
    assert sorted(p.name for p in removed) == sorted(names[:2])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names[2:] + [f"aam-run-{dead}-file"])
