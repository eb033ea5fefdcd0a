"""Open a dataset folder written by `aam convert` (format: manifest.json, samples/asvs.parquet)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from aam.data._split import SPLITS
from aam.errors import AamUserError

SCHEMA_VERSIONS = (1,)
MANIFEST_KEYS = ("targets", "categoricals", "token_width", "split")
SAMPLE_COLUMNS = ("sample_id", "asv_idx", "counts", "split")
# each sample's group on a table converted with --group-by (what folds and the neighbour prior keep apart)
GROUP_COLUMN = "group"


def _read_parquet(file: Path, columns: tuple[str, ...]) -> pa.Table:
    """A whole Parquet file, read now: a truncated file or a corrupt page is one line, not a traceback."""
    try:
        table = pq.read_table(file)
    except (pa.ArrowException, OSError, ValueError) as e:
        raise AamUserError(f"{file}: not a readable Parquet file ({str(e).splitlines()[0][:160]}); it may be "
                           "truncated or corrupt; re-run aam convert") from None
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise AamUserError(f"{file}: no column '{missing[0]}'; re-run aam convert")
    return table


def _is_names(value) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _check_manifest_types(manifest: dict, where: Path) -> None:
    """The manifest's fields that aam reads, of the types `aam convert` writes: an edited file
    (`targets: 5`) is one line naming the field, not a traceback wherever it is first used."""
    width = manifest["token_width"]
    split = manifest["split"]
    problems = [
        (not _is_names(manifest["targets"]), "targets", "a list of target column names"),
        (not isinstance(manifest["categoricals"], dict)
         or not all(isinstance(k, str) and _is_names(v) for k, v in manifest["categoricals"].items()),
         "categoricals", "a mapping of column name to its list of categories"),
        (isinstance(width, bool) or not isinstance(width, int) or width < 1, "token_width", "a whole number >= 1"),
        (not isinstance(split, dict) or not isinstance(split.get("counts", {}), dict), "split",
         "a mapping with the split's counts"),
        (manifest.get("unifrac") is not None and not isinstance(manifest.get("unifrac"), dict), "unifrac",
         "a mapping describing unifrac.npy, or null"),
    ]
    for wrong, key, expected in problems:
        if wrong:
            raise AamUserError(f"{where}: '{key}' is {json.dumps(manifest[key])[:60]}, not {expected} (was it "
                               "edited?); re-run aam convert")


@dataclass
class Dataset:
    path: Path
    manifest: dict
    samples: pa.Table  # one row per sample (see aam.data.convert)
    asvs: pa.Table  # asv_idx, asv_id, sequence, tokens
    tokens: np.ndarray  # uint8 [n_asvs, token_width]
    unifrac: np.ndarray | None  # float32 [k, k], rows = samples.unifrac_row

    @property
    def targets(self) -> list[str]:
        return list(self.manifest["targets"])

    @property
    def categoricals(self) -> dict[str, list[str]]:
        return dict(self.manifest["categoricals"])

    @property
    def token_width(self) -> int:
        return int(self.manifest["token_width"])

    @classmethod
    def open(cls, path: str | Path) -> "Dataset":
        path = Path(path)
        hint = (f"create one with: aam convert --table ... --metadata ... --target ... --out {path} "
                f"(or the bundled example: aam convert --example mouse_age_mini --out {path})")
        if not path.is_dir():
            raise AamUserError(f"dataset folder {path} does not exist; {hint}")
        manifest_path = path / "manifest.json"
        if not manifest_path.is_file():
            raise AamUserError(f"{path} is not an aam dataset (no manifest.json); {hint}")
        try:
            manifest = json.loads(manifest_path.read_text())
            version = manifest["schema_version"]
        except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError, RecursionError):
            raise AamUserError(f"{manifest_path} is not a valid aam manifest; re-run aam convert") from None
        if version not in SCHEMA_VERSIONS:
            raise AamUserError(
                f"{path} has dataset schema_version {version!r}, which this aam ({SCHEMA_VERSIONS}) cannot read; "
                "convert it again with this version of aam"
            )
        files = ["samples.parquet", "asvs.parquet"] + (["unifrac.npy"] if manifest.get("unifrac") else [])
        missing = [f for f in files if not (path / f).is_file()]
        if missing:
            raise AamUserError(f"dataset {path} is incomplete (no {missing[0]}); re-run aam convert")
        rerun = "re-run aam convert"
        missing_keys = [k for k in MANIFEST_KEYS if k not in manifest]
        if missing_keys:
            raise AamUserError(f"{manifest_path} has no '{missing_keys[0]}' (is it cut short or edited?); {rerun}")
        _check_manifest_types(manifest, manifest_path)
        samples = _read_parquet(path / "samples.parquet", SAMPLE_COLUMNS)
        asvs = _read_parquet(path / "asvs.parquet", ("tokens",))
        try:
            width = int(manifest["token_width"])
            flat = asvs.column("tokens").combine_chunks().flatten().to_numpy(zero_copy_only=False)
            tokens = np.asarray(flat, dtype=np.uint8).reshape(len(asvs), width)
        except (TypeError, ValueError, pa.ArrowException) as e:
            raise AamUserError(f"{path / 'asvs.parquet'}: its tokens do not fit the manifest's token_width "
                               f"({str(e).splitlines()[0][:120]}); {rerun}") from None
        unifrac = None
        if manifest.get("unifrac"):
            try:
                unifrac = np.load(path / "unifrac.npy", allow_pickle=False)
            except (ValueError, OSError, EOFError) as e:
                raise AamUserError(f"{path / 'unifrac.npy'}: not a readable matrix ({str(e)[:120]}); {rerun}") from None
        return cls(path=path, manifest=manifest, samples=samples, asvs=asvs, tokens=tokens, unifrac=unifrac)

    def split(self, name: str) -> pa.Table:
        """The rows of one split (train, val or test), in the stored order."""
        if name not in SPLITS:
            raise AamUserError(f"split '{name}' is not one of: {', '.join(SPLITS)}")
        return self.samples.filter(pc.equal(self.samples.column("split"), name))

    def __repr__(self) -> str:
        counts = self.manifest["split"]["counts"]
        return (
            f"Dataset({str(self.path)!r}, {len(self.samples)} samples, {len(self.asvs)} ASVs, "
            f"targets={self.targets}, split={counts})"
        )
