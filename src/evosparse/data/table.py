"""A user's own table (``csv:PATH``): numeric feature columns and one label column.

The label is the last column, or the column named by ``target`` (which needs a header row). The
first row is a header when every cell in it is non-numeric, or when it has a non-numeric cell above
a numeric one. Labels may be numbers or strings; classes are numbered in sorted order of their
values (numerically when all labels are numbers) and keep their names (``Dataset.class_names``,
recorded in result.json). A label column of fractional numbers with more than
:data:`MAX_FRACTIONAL_CLASSES` distinct values is refused: it holds a measured quantity, and
training one class per value would report a meaningless accuracy. A fixed-seed, stratified
train/test split keeps every run on the same test rows; features are standardised column by column.
"""

from __future__ import annotations

import csv
import math
from collections import Counter
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split

from evosparse.data.arrays import dataset_from_arrays
from evosparse.data.base import Dataset
from evosparse.errors import DataError, UsageError

_SHOWN_COLUMNS = 12
#: More distinct fractional label values than this mean a continuous column, not classes.
MAX_FRACTIONAL_CLASSES = 10


def load_csv(path: str | Path, target: str | None = None, test_fraction: float = 0.2, split_seed: int = 0) -> Dataset:
    """Read a CSV table into a standardised train/test Dataset named ``csv:PATH``.

    Raises :class:`DataError` for a missing or empty file, ragged rows, fewer than two columns or
    classes, a feature cell that is not a finite number, or a ``target`` that is not in the header.
    """
    if not 0.0 < test_fraction < 1.0:
        raise UsageError(f"test fraction must lie strictly between 0 and 1, got {test_fraction}")
    path = Path(path)
    lines, rows = _read_rows(path)
    header = rows[0] if _has_header(rows) else None
    if header is not None:
        lines, rows = lines[1:], rows[1:]
    if not rows:
        raise DataError(f"{path} has a header but no data rows")
    label_at = _label_column(path, header, target, len(rows[0]))
    names = header or [f"column {i + 1}" for i in range(len(rows[0]))]
    features = _feature_matrix(path, lines, rows, [i for i in range(len(names)) if i != label_at], names)
    labels, class_names = _class_indices(path, lines, [row[label_at] for row in rows], names[label_at])
    train, test = _split(path, features, labels, len(class_names), test_fraction, split_seed)
    return dataset_from_arrays(f"csv:{path}", len(class_names), train, test, per_feature=True, class_names=class_names)


def _read_rows(path: Path) -> tuple[list[int], list[list[str]]]:
    """Non-blank rows with stripped cells, and the file line each ends on; all rows equally wide."""
    lines: list[int] = []
    rows: list[list[str]] = []
    try:
        with open(path, newline="", encoding="utf-8-sig") as stream:
            reader = csv.reader(stream)
            for raw in reader:
                row = [cell.strip() for cell in raw]
                if any(row):
                    lines.append(reader.line_num)
                    rows.append(row)
    except FileNotFoundError:
        raise DataError(f"no such file: {path}") from None
    except UnicodeDecodeError:
        raise DataError(f"{path} is not UTF-8 text") from None
    except csv.Error as err:
        raise DataError(f"{path} is not valid CSV: {err}") from None
    except OSError as err:
        raise DataError(f"cannot read {path}: {err.strerror or err}") from None
    if not rows:
        raise DataError(f"{path} is empty")
    width = len(rows[0])
    if width < 2:
        raise DataError(f"{path} needs at least 2 columns (features, then a label), found {width}")
    for line, row in zip(lines, rows):
        if len(row) != width:
            raise DataError(f"{path} line {line} has {len(row)} fields, expected {width} like the first row")
    return lines, rows


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _has_header(rows: list[list[str]]) -> bool:
    """The first row is a header if no cell is numeric, or a cell is text above a number."""
    numeric = [_is_number(cell) for cell in rows[0]]
    if not any(numeric):
        return True
    below = rows[1] if len(rows) > 1 else []
    return any(not is_num and _is_number(cell) for is_num, cell in zip(numeric, below))


def _label_column(path: Path, header: list[str] | None, target: str | None, width: int) -> int:
    if target is None:
        return width - 1
    if header is None:
        raise DataError(f"{path} has no header row, so no column is named {target!r}; add a header line")
    if target not in header:
        shown = ", ".join(header[:_SHOWN_COLUMNS]) + (", ..." if len(header) > _SHOWN_COLUMNS else "")
        raise DataError(f"{path} has no column named {target!r}; its columns are {shown}")
    return header.index(target)


def _feature_matrix(
    path: Path, lines: list[int], rows: list[list[str]], columns: list[int], names: list[str]
) -> np.ndarray:
    """Feature columns as float32; the first cell that is not a finite number is named by line and
    column in the error."""
    cells = [[row[i] for i in columns] for row in rows]
    try:
        values = np.array(cells, dtype=np.float64)
    except ValueError:
        r, c = next((r, c) for r, row in enumerate(cells) for c, cell in enumerate(row) if not _is_number(cell))
        shown = repr(cells[r][c]) if cells[r][c] else "an empty cell"
        raise DataError(f"{path} line {lines[r]}, column {names[columns[c]]!r}: {shown} is not a number") from None
    non_finite = np.argwhere(~np.isfinite(values))
    if len(non_finite):
        r, c = non_finite[0]
        raise DataError(f"{path} line {lines[r]}, column {names[columns[c]]!r}: {cells[r][c]} is not finite")
    return values.astype(np.float32)


def _class_indices(path: Path, lines: list[int], cells: list[str], column: str) -> tuple[np.ndarray, tuple[str, ...]]:
    """Map label cells to class indices in sorted order of their (numeric, when possible) values;
    return them and the classes' names (a number's name is its first spelling in the file)."""
    for line, cell in zip(lines, cells):
        if not cell:
            raise DataError(f"{path} line {line} has an empty label")
        if _is_number(cell) and not math.isfinite(float(cell)):
            raise DataError(f"{path} line {line} has the label {cell}, which is not finite")
    numeric = all(_is_number(cell) for cell in cells)
    keys: list[float | str] = [float(cell) for cell in cells] if numeric else list(cells)
    spelling: dict[float | str, str] = {}
    for key, cell in zip(keys, cells):
        spelling.setdefault(key, cell)
    classes = sorted(spelling)
    if len(classes) < 2:
        raise DataError(f"{path} has a single class ({cells[0]!r}); classification needs at least 2")
    fractional = numeric and any(not float(key).is_integer() for key in classes)
    if fractional and len(classes) > MAX_FRACTIONAL_CLASSES:
        raise DataError(
            f"{path}: the label column {column!r} holds {len(classes)} distinct fractional numbers in "
            f"{len(cells)} rows, a measured quantity rather than classes; name the class column with "
            "--target NAME, or write the classes as integers or names"
        )
    index = {value: i for i, value in enumerate(classes)}
    names = tuple(spelling[value] for value in classes)
    return np.array([index[key] for key in keys], dtype=np.int64), names


def _split(
    path: Path, features: np.ndarray, labels: np.ndarray, num_classes: int, test_fraction: float, seed: int
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Fixed-seed train/test split, stratified when every class can appear on both sides."""
    rows = len(labels)
    test_rows = math.ceil(test_fraction * rows)
    if test_rows < 1 or rows - test_rows < 2:
        raise DataError(f"{path} has {rows} data rows, too few for a train/test split")
    stratifiable = (
        min(Counter(labels.tolist()).values()) >= 2 and test_rows >= num_classes and rows - test_rows >= num_classes
    )
    x_train, x_test, y_train, y_test = train_test_split(
        features,
        labels,
        test_size=test_fraction,
        random_state=seed,
        stratify=labels if stratifiable else None,
    )
    return (x_train, y_train), (x_test, y_test)
