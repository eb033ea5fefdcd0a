"""The experiment's storage filesystem: Tune's copies into a local experiment appear only whole."""

import pickle
import signal
import subprocess
import sys

import pyarrow.fs as pafs

from aam.distributed._storage import whole_files_filesystem

# A writer killed half-way through a file, the way a SIGKILL meets Tune's copy of its experiment
# state: its second argument, "whole" or "local", names the filesystem it writes through.
HALF_WRITTEN = """
import sys, time
import pyarrow.fs as pafs
from aam.distributed._storage import whole_files_filesystem
fs = whole_files_filesystem() if sys.argv[2] == "whole" else pafs.LocalFileSystem()
out = fs.open_output_stream(sys.argv[1])
out.write(b'{"trial_data": [')
out.flush()
print("half", flush=True)
time.sleep(60)
"""


def _kill_half_way(target, filesystem: str) -> None:
    writer = subprocess.Popen([sys.executable, "-c", HALF_WRITTEN, str(target), filesystem], stdout=subprocess.PIPE)
    assert writer.stdout.readline() == b"half\n"
    writer.send_signal(signal.SIGKILL)
    writer.wait()


def test_a_writer_killed_half_way_leaves_the_previous_file_whole(tmp_path):
    target = tmp_path / "experiment_state-2026-12-07_01-22-47.json"
    target.write_text('{"trial_data": []}')
    _kill_half_way(target, "whole")
    assert target.read_text() == '{"trial_data": []}'
    leftovers = [p.name for p in tmp_path.iterdir() if p != target]
    assert len(leftovers) == 1 and leftovers[0].startswith(f".{target.name}.")  # hidden: no glob of Tune's finds it

    # pyarrow's own local filesystem, which Tune used before, truncates the file in place
    _kill_half_way(target, "local")
    assert target.read_text() == '{"trial_data": ['


def test_copies_into_it_are_whole_and_it_travels_to_trials(tmp_path):
    staging, experiment = tmp_path / "staging", tmp_path / "experiment"
    (staging / "checkpoint_000000").mkdir(parents=True)
    (staging / "checkpoint_000000" / "model.pt").write_bytes(bytes(range(256)) * 5000)
    (staging / "result.json").write_text('{"val_mae": 1.5}\n')
    fs = pickle.loads(pickle.dumps(whole_files_filesystem()))  # as Tune sends it to a trial
    pafs.copy_files(str(staging), str(experiment), destination_filesystem=fs)
    assert (experiment / "checkpoint_000000" / "model.pt").read_bytes() == bytes(range(256)) * 5000
    assert (experiment / "result.json").read_text() == '{"val_mae": 1.5}\n'
    assert sorted(p.name for p in experiment.rglob("*")) == ["checkpoint_000000", "model.pt", "result.json"]
