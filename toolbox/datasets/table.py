from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from toolbox.component import free_on_resume
from toolbox.datasets import (
    DatasetInfo,
    DatasetSplits,
    HeldOutDatasetConfig,
    Task,
    register_dataset,
)
from toolbox.errors import UserError

if TYPE_CHECKING:
    import pandas as pd
    import torch

PARQUET_SUFFIXES = (".parquet", ".pq")
TAB_SUFFIXES = (".tsv", ".tab")
MISSING_CATEGORY = "missing"
_TASKS: dict[tuple, Task] = {}
"""The task read from a target column, by (file, its size and mtime, column)."""


def _listed(names, limit: int = 40) -> str:
    names = [str(name) for name in names]
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _is_categorical(column: pd.Series) -> bool:
    """Whether a column holds labels (strings, categories, booleans) rather than numbers."""
    import pandas as pd

    return pd.api.types.is_bool_dtype(column) or not pd.api.types.is_numeric_dtype(column)


@register_dataset("table")
@dataclass(frozen=True)
class Table(HeldOutDatasetConfig):
    """A table of your own (CSV, TSV or Parquet, read with pandas): one row per sample, one
    column the target (--data.target), the other columns the features. Stored inputs keep
    their raw units (float32 (N, F), the table's column order: numeric columns as given,
    categorical ones encoded); DatasetInfo.mean/std carry the training split's per-feature
    mean and standard deviation of the numeric columns (0 and 1 for encoded ones), which
    the toolbox applies to every batch, so the model sees standardised numbers and nothing
    is learnt from the held-out rows. test.py's predictions name each sample by its
    0-based data row (column ``row``)."""

    path: str = free_on_resume("")
    """The table to read: .csv (delimiter sniffed), .tsv or .tab (tab-separated), or
    .parquet/.pq (needs pyarrow)."""
    target: str = ""
    """The column to predict (required)."""
    drop: tuple[str, ...] = ()
    """Columns to ignore (identifiers, leaks), e.g. --data.drop id name."""
    task: Literal["auto", "classification", "regression"] = "auto"
    """auto: a string, categorical or boolean target is classification (classes: its sorted
    distinct values), a numeric one regression; classification: also for integer targets."""
    categorical: Literal["onehot", "index"] = "onehot"
    """How string/categorical/boolean features are encoded, with the training split's
    categories: onehot: one 0/1 column per category (an unseen one: all zeros); index: one
    column holding 1..K for the categories in sorted order (0: unseen)."""
    missing: Literal["error", "drop", "fill"] = "fill"
    """Missing feature values: error: stop with a message; drop: leave those rows out;
    fill: numeric features take the training split's median, categorical ones a category
    "missing". Rows without a target value are always left out (their count is logged)."""

    def problems(self) -> list[str]:
        found = super().problems()
        if self.target and self.target in self.drop:
            found.append(
                f"--data.drop names the target {self.target!r}; the column to predict cannot "
                "be dropped: remove it from --data.drop."
            )
        if self.augment != "none":
            found.append(f"--data.augment is {self.augment}; a table has no images: use none.")
        return found

    def __post_init__(self) -> None:
        # The task must be known before build (criteria and metrics are checked against it):
        # auto reads the target column alone, once; a table that cannot be read is reported
        # by build(), with the columns it has.
        if self.task == "auto" and self.path and self.target:
            try:
                object.__setattr__(self, "task", self._implied_task())
            except UserError:
                pass

    def _implied_task(self) -> Task:
        file = self._file()
        self._check_columns(self._columns(file))
        stat = file.stat()
        key = (str(file.resolve()), stat.st_size, stat.st_mtime_ns, self.target)
        if key not in _TASKS:
            column = self._read(file, [self.target])[self.target].dropna()
            _TASKS[key] = "classification" if _is_categorical(column) else "regression"
        return _TASKS[key]

    # --- reading ---------------------------------------------------------------------------

    def _file(self) -> Path:
        if not self.path:
            raise UserError(
                "--data.path is not given; name the table to read, e.g. --data.path "
                "cells.csv (a CSV, TSV or Parquet file)."
            )
        file = Path(self.path).expanduser()
        if not file.is_file():
            what = "is a directory" if file.is_dir() else "does not exist"
            raise UserError(
                f"--data.path {self.path} {what}; give the path of a CSV, TSV or Parquet file."
            )
        return file

    def _separator(self, file: Path) -> str:
        if file.suffix.lower() in TAB_SUFFIXES:
            return "\t"
        try:
            with open(file, newline="", errors="replace") as text:
                sample = text.read(65536)
            return csv.Sniffer().sniff(sample, delimiters=",\t;|").delimiter
        except (csv.Error, OSError):
            return ","

    def _read(self, file: Path, columns: list[str] | None = None, rows: int | None = None):
        import pandas as pd

        try:
            if file.suffix.lower() in PARQUET_SUFFIXES:
                if rows == 0:
                    import pyarrow.parquet

                    names = pyarrow.parquet.read_schema(file).names
                    return pd.DataFrame(columns=names)
                return pd.read_parquet(file, columns=columns)
            return pd.read_csv(file, sep=self._separator(file), usecols=columns, nrows=rows)
        except ImportError as error:
            raise UserError(
                f"--data.path {self.path} is a Parquet file, and reading it needs pyarrow, "
                f"which is not installed ({error}); install it (uv add pyarrow) or give a "
                "CSV file."
            ) from None
        except (ValueError, OSError, UnicodeDecodeError, pd.errors.ParserError) as error:
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error)
            raise UserError(
                f"--data.path {self.path} could not be read as a table ({first}); give a "
                "CSV, TSV or Parquet file with a header row."
            ) from None

    def _columns(self, file: Path) -> list[str]:
        return [str(name) for name in self._read(file, rows=0).columns]

    def _check_columns(self, columns: list[str]) -> None:
        where = f"{self.path}'s columns are: {_listed(columns)}"
        if not self.target:
            raise UserError(f"--data.target is not given; name the column to predict ({where}).")
        if self.target not in columns:
            raise UserError(
                f"--data.target {self.target!r} is not a column of {self.path}; {where}."
            )
        unknown = [name for name in self.drop if name not in columns]
        if unknown:
            raise UserError(
                f"--data.drop names {_listed(unknown)}, not a column of {self.path}; {where}."
            )
        if not set(columns) - {self.target, *self.drop}:
            raise UserError(
                f"{self.path} has no feature column left after --data.target {self.target} "
                f"and --data.drop {' '.join(self.drop)}; drop fewer columns."
            )

    # --- building --------------------------------------------------------------------------

    def _training_frame(self):
        """The table's usable rows (target present, missing values handled), its feature
        columns, and the rows of each split."""
        file = self._file()
        self._check_columns(self._columns(file))
        frame = self._read(file)
        frame.columns = [str(name) for name in frame.columns]
        frame = frame.drop(columns=list(self.drop))
        logger = logging.getLogger("toolbox")
        unlabelled = frame[self.target].isna()
        if unlabelled.any():
            logger.info(
                "%s: left out %d rows without a %s value", self.path, unlabelled.sum(), self.target
            )
            frame = frame[~unlabelled]
        features = [name for name in frame.columns if name != self.target]
        frame = self._handle_missing(frame, features, logger)
        if len(frame) == 0:
            raise UserError(f"--data.path {self.path} has no row left to learn from.")
        parts = {name: rows.numpy() for name, rows in self.three_splits(len(frame)).items()}
        if len(parts["train"]) == 0:
            raise UserError(
                f"--data.path {self.path} has {len(frame)} usable rows: none is left for "
                "training after --data.test-fraction and --data.val-fraction; add rows or "
                "lower the fractions."
            )
        return frame, features, parts

    def _fit_encoding(self, frame: pd.DataFrame, features: list[str], train_index) -> list:
        """Per feature, what encodes it, learnt from the training rows alone: a categorical
        one's sorted categories, a numeric one's median (for gaps)."""
        import numpy as np

        train_rows = frame.iloc[train_index]
        encoding = []
        for name in features:
            if _is_categorical(frame[name]):
                encoding.append((name, sorted(set(train_rows[name].astype(str))), None))
            else:
                values = train_rows[name].to_numpy(dtype=np.float64, na_value=np.nan)
                median = np.nanmedian(values) if (~np.isnan(values)).any() else 0.0
                encoding.append((name, None, float(median)))
        return encoding

    def _encode_features(self, frame: pd.DataFrame, encoding: list):
        """The (N, F) float64 features of ``frame`` and, per column, whether it is numeric."""
        import numpy as np

        columns, numeric = [], []
        for name, categories, median in encoding:
            if categories is not None:
                encoded = self._encode(frame[name], categories)
                numeric += [False] * encoded.shape[1]
            else:
                values = frame[name].to_numpy(dtype=np.float64, na_value=np.nan)
                encoded = np.where(np.isnan(values), median, values)[:, None]  # gaps: fill
                numeric.append(True)
            columns.append(encoded)
        return np.concatenate(columns, axis=1), numeric

    def build(self) -> DatasetSplits:
        import numpy as np
        import torch

        frame, features, parts = self._training_frame()
        target, info_task, class_names = self._targets(frame[self.target])
        encoding = self._fit_encoding(frame, features, parts["train"])
        values, numeric = self._encode_features(frame, encoding)
        train_values = values[parts["train"]]
        means = [float(train_values[:, i].mean()) if n else 0.0 for i, n in enumerate(numeric)]
        stds = []
        for i, is_numeric in enumerate(numeric):
            std = float(train_values[:, i].std(ddof=1)) if len(train_values) > 1 else 0.0
            stds.append(std if is_numeric and np.isfinite(std) and std > 0 else 1.0)
        inputs = torch.as_tensor(values, dtype=torch.float32)
        rows = frame.index.to_numpy()
        splits = {
            name: {"input": inputs[index], "target": target[index]} for name, index in parts.items()
        }
        info = DatasetInfo(
            task=info_task,
            input_shape=(inputs.shape[1],),
            num_outputs=len(class_names) if info_task == "classification" else 1,
            mean=tuple(means),
            std=tuple(stds),
            class_names=class_names,
        )
        sources = {name: [str(row) for row in rows[index]] for name, index in parts.items()}
        return DatasetSplits(info, **splits, sources=sources, source_column="row")

    def encode_table(self, path: Path) -> torch.Tensor:
        """The rows of another table with this one's features (its target column, if any,
        ignored), encoded as the training rows were: for predict.py. Missing values are
        filled as --data.missing fill does, whatever the run's policy."""
        import torch

        frame, features, parts = self._training_frame()
        encoding = self._fit_encoding(frame, features, parts["train"])
        new = Table(path=str(path), target=self.target)._read(Path(path))
        new.columns = [str(name) for name in new.columns]
        absent = [name for name in features if name not in new.columns]
        if absent:
            raise UserError(
                f"{path} lacks the feature columns {_listed(absent)} that the run was trained "
                f"on; its columns are {_listed(new.columns)}."
            )
        for name, categories, _ in encoding:
            if categories is not None and new[name].isna().any():
                new = new.assign(**{name: new[name].astype(object).fillna(MISSING_CATEGORY)})
        values, _ = self._encode_features(new, encoding)
        return torch.as_tensor(values, dtype=torch.float32)

    def _handle_missing(self, frame: pd.DataFrame, features: list[str], logger) -> pd.DataFrame:
        gaps = frame[features].isna()
        if not gaps.to_numpy().any():
            return frame
        if self.missing == "drop":
            incomplete = gaps.any(axis=1)
            logger.info(
                "%s: left out %d rows with missing feature values (--data.missing drop)",
                self.path,
                incomplete.sum(),
            )
            return frame[~incomplete]
        if self.missing == "error":
            counts = gaps.sum()
            counts = counts[counts > 0]
            first = frame.index[gaps.any(axis=1).to_numpy()][0]
            raise UserError(
                f"--data.missing is error and {self.path} has missing values in "
                + _listed(f"{name} ({count} rows)" for name, count in counts.items())
                + f", first in data row {first}; fill them in, or use --data.missing fill "
                "(train medians, a 'missing' category) or --data.missing drop (leave the "
                "rows out)."
            )
        for name in features:  # fill: categorical gaps here, numeric ones with train medians
            if _is_categorical(frame[name]) and gaps[name].any():
                frame = frame.assign(**{name: frame[name].astype(object)})
                frame.loc[gaps[name], name] = MISSING_CATEGORY
        return frame

    def _encode(self, column: pd.Series, categories: list[str]):
        import numpy as np

        values = column.astype(str).to_numpy()
        codes = {category: code for code, category in enumerate(categories, start=1)}
        index = np.array([codes.get(value, 0) for value in values])  # 0: unseen in train
        if self.categorical == "index":
            return index[:, None].astype(np.float64)
        return (index[:, None] == np.arange(1, len(categories) + 1)[None, :]).astype(np.float64)

    def _targets(self, column: pd.Series):
        """The target tensor, the task and the class names."""
        import numpy as np
        import torch

        labels = _is_categorical(column)
        task = self.task
        if task == "auto":
            task = "classification" if labels else "regression"
        if task == "regression":
            if labels:
                raise UserError(
                    f"--data.task is regression but --data.target {self.target!r} holds "
                    f"labels such as {column.iloc[0]!r}; use --data.task classification "
                    "(or auto), or a numeric column."
                )
            values = column.to_numpy(dtype=np.float32)
            return torch.as_tensor(values).unsqueeze(1), task, ()
        if labels:
            values = column.astype(str).to_numpy()
        else:
            numbers = column.to_numpy(dtype=np.float64)
            if not np.all(numbers == np.round(numbers)):
                raise UserError(
                    f"--data.task is classification but --data.target {self.target!r} "
                    "holds non-integer numbers; classes must be integers or labels (or use "
                    "--data.task regression)."
                )
            values = numbers.astype(np.int64)
        classes = sorted(set(values.tolist()))
        codes = {value: code for code, value in enumerate(classes)}
        target = torch.as_tensor([codes[value] for value in values.tolist()], dtype=torch.int64)
        return target, task, tuple(str(value) for value in classes)
