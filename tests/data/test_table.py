"""User tables (``csv:PATH``): header detection, label mapping, split, standardisation, errors."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from evosparse.data.table import load_csv
from evosparse.errors import DataError, UsageError


def write(tmp_path: Path, text: str, name: str = "table.csv", encoding: str = "utf-8") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode(encoding))
    return path


def balanced_rows(n: int = 20) -> list[str]:
    """``n`` rows ``i, i², label`` with labels alternating cat/dog."""
    return [f"{i},{i * i},{'cat' if i % 2 else 'dog'}" for i in range(n)]


def all_labels(data) -> list[int]:
    return data.y_train.tolist() + data.y_test.tolist()


def test_header_and_string_labels_become_sorted_class_indices(tmp_path):
    data = load_csv(write(tmp_path, "a,b,animal\n" + "\n".join(balanced_rows()) + "\n"))
    assert data.name == f"csv:{tmp_path / 'table.csv'}"
    assert data.num_classes == 2 and data.x_train.shape == (16, 2) and data.x_test.shape == (4, 2)
    # "cat" sorts before "dog": odd i (cat) -> 0; i is recoverable from the standardised column a
    x = np.concatenate([data.x_train.numpy(), data.x_test.numpy()])
    order = np.argsort(x[:, 0])
    assert [all_labels(data)[k] for k in order] == [1 if i % 2 == 0 else 0 for i in range(20)]
    assert data.class_names == ("cat", "dog")


def test_numeric_labels_sort_numerically_and_equal_values_merge(tmp_path):
    rows = [f"{i},{label}" for i, label in enumerate(["9", "10", "9.0", "10", "2", "2"] * 3)]
    data = load_csv(write(tmp_path, "\n".join(rows)))
    assert data.num_classes == 3
    assert Counter(all_labels(data)) == {0: 6, 1: 6, 2: 6}  # 2 -> 0, 9 and 9.0 -> 1, 10 -> 2
    assert data.class_names == ("2", "9", "10")  # a number is named as it is first written


def test_a_label_column_of_many_fractional_numbers_is_refused_with_a_hint(tmp_path):
    """The issue's case: 121 distinct float values in 178 rows would train a 121-class model."""
    rows = [f"{i % 7},{(i * 37) % 121 / 8 + 0.0625}" for i in range(178)]
    with pytest.raises(DataError) as caught:
        load_csv(write(tmp_path, "x,quality\n" + "\n".join(rows)))
    assert str(caught.value) == (
        f"{tmp_path / 'table.csv'}: the label column 'quality' holds 121 distinct fractional numbers in 178 rows, "
        "a measured quantity rather than classes; name the class column with --target NAME, or write the classes "
        "as integers or names"
    )


@pytest.mark.parametrize("distinct, refused", [(10, False), (11, True)])
def test_a_few_fractional_labels_are_still_classes(tmp_path, distinct, refused):
    rows = [f"{i},{i % distinct + 0.5}" for i in range(5 * distinct)]
    path = write(tmp_path, "\n".join(rows))
    if refused:
        with pytest.raises(DataError, match="label column 'column 2' holds 11 distinct fractional numbers"):
            load_csv(path)
        return
    data = load_csv(path)
    assert data.num_classes == distinct and data.class_names[:2] == ("0.5", "1.5")


def test_headerless_file_with_text_labels_is_read_as_data(tmp_path):
    data = load_csv(write(tmp_path, "\n".join(balanced_rows(10))))
    assert len(all_labels(data)) == 10


def test_target_names_the_label_column(tmp_path):
    rows = [f"{i % 3},{i},{i * 2}" for i in range(12)]
    data = load_csv(write(tmp_path, "kind,x,y\n" + "\n".join(rows)), target="kind")
    assert data.num_classes == 3 and data.input_shape == (2,)
    x = np.concatenate([data.x_train.numpy(), data.x_test.numpy()])
    np.testing.assert_allclose(np.corrcoef(x[:, 0], x[:, 1])[0, 1], 1.0, rtol=1e-5)  # x and y, not kind


def test_stratified_split_is_fixed_by_the_seed(tmp_path):
    path = write(tmp_path, "a,b,animal\n" + "\n".join(balanced_rows()))
    first, again, other = load_csv(path), load_csv(path), load_csv(path, split_seed=1)
    assert Counter(first.y_test.tolist()) == {0: 2, 1: 2}
    assert first.y_test.tolist() == again.y_test.tolist()
    assert not np.array_equal(first.x_test.numpy(), other.x_test.numpy())


def test_classes_too_small_to_stratify_fall_back_to_a_plain_split(tmp_path):
    rows = [*balanced_rows(10), "5,5,bird"]
    data = load_csv(write(tmp_path, "\n".join(rows)), test_fraction=0.3)
    assert data.num_classes == 3 and len(all_labels(data)) == 11


def test_features_are_standardised_one_by_one(tmp_path):
    rows = [f"{i},{1000 * i},7,{i % 2}" for i in range(30)]
    data = load_csv(write(tmp_path, "\n".join(rows)))
    x = data.x_train.numpy()
    np.testing.assert_allclose(x.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(x[:, :2].std(axis=0, ddof=1), 1, rtol=1e-4)
    np.testing.assert_array_equal(x[:, 2], 0)  # a constant column stays centred at zero


def test_crlf_bom_quotes_spaces_and_blank_lines_are_tolerated(tmp_path):
    text = '\ufeff"a", "b" ,label\r\n1, 2,"x"\r\n\r\n3,4,y\r\n5,6,x\r\n7,8,y\r\n\r\n'
    data = load_csv(write(tmp_path, text), test_fraction=0.5)
    assert data.num_classes == 2 and len(all_labels(data)) == 4


@settings(max_examples=30, deadline=None, derandomize=True)
@given(
    rows=st.integers(4, 40),
    columns=st.integers(1, 4),
    classes=st.integers(2, 4),
    fraction=st.floats(0.1, 0.5),
    seed=st.integers(0, 1000),
)
def test_split_keeps_every_row_once(tmp_path_factory, rows, columns, classes, fraction, seed):
    rng = np.random.default_rng(seed)
    labels = np.concatenate([np.arange(classes), rng.integers(0, classes, max(rows - classes, 0))])
    features = rng.integers(-50, 50, (len(labels), columns))
    text = "\n".join(",".join(map(str, [*row, f"class{label}"])) for row, label in zip(features, labels))
    path = tmp_path_factory.mktemp("csv") / "t.csv"
    path.write_text(text)
    if len(labels) - int(np.ceil(fraction * len(labels))) < 2:
        with pytest.raises(DataError, match="too few for a train/test split"):
            load_csv(path, test_fraction=fraction, split_seed=seed)
        return
    data = load_csv(path, test_fraction=fraction, split_seed=seed)
    assert Counter(all_labels(data)) == Counter(labels.tolist())
    assert len(data.y_test) == int(np.ceil(fraction * len(labels)))
    assert data.num_classes == classes


@pytest.mark.parametrize(
    ("text", "kwargs", "message"),
    [
        ("", {}, "is empty"),
        ("\n \n\n", {}, "is empty"),
        ("1\n2\n3\n", {}, "at least 2 columns"),
        ("a,b,c\n1,2,x\n3,4\n", {}, "line 3 has 2 fields, expected 3"),
        ("a,b,c\n1,2,x\n3,4,x\n", {}, r"single class \('x'\)"),
        ("a,b,c\n1,2,x\n3,oops,y\n", {}, "line 3, column 'b': 'oops' is not a number"),
        ("1,2,x\n3,,y\n", {}, "line 2, column 'column 2': an empty cell is not a number"),
        ("a,b,c\n1,nan,x\n3,4,y\n", {}, "line 2, column 'b': nan is not finite"),
        ("a,b,c\n1,2,x\n-inf,4,y\n", {}, "line 3, column 'a': -inf is not finite"),
        ("a,b,c\n1,2,\n3,4,y\n", {}, "line 2 has an empty label"),
        ("a,b,c\n1,2,1\n3,4,NaN\n", {}, "line 3 has the label NaN, which is not finite"),
        ("a,b,c\n", {}, "header but no data rows"),
        ("1,2,x\n3,4,y\n", {"target": "c"}, "no header row, so no column is named 'c'"),
        ("a,b,c\n1,2,x\n3,4,y\n", {"target": "label"}, "no column named 'label'; its columns are a, b, c"),
        ("a,b,c\n1,2,x\n3,4,y\n", {}, "2 data rows, too few"),
    ],
)
def test_bad_tables_raise_one_line_data_errors(tmp_path, text, kwargs, message):
    with pytest.raises(DataError, match=message) as caught:
        load_csv(write(tmp_path, text), **kwargs)
    assert "\n" not in str(caught.value)


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_csv(tmp_path / "absent.csv")
    with pytest.raises(DataError, match="cannot read"):
        load_csv(tmp_path)
    with pytest.raises(DataError, match="not UTF-8"):
        load_csv(write(tmp_path, "a,b\n\xff\xfe,1\n", encoding="latin-1"))


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.5, 2.0])
def test_test_fraction_must_lie_between_zero_and_one(tmp_path, fraction):
    with pytest.raises(UsageError, match="test fraction"):
        load_csv(write(tmp_path, "\n".join(balanced_rows())), test_fraction=fraction)
