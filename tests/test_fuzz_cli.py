"""Random options, TOML files and CSV tables thrown at the command line: every outcome is a success, or
exit status 2 with one line (1 only for a run that diverges, its error line after any warnings the run printed as
it started), never a traceback."""

import contextlib
import io
import string
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from evosparse.cli import main

VALUES = st.one_of(
    st.sampled_from(["0", "-1", "1", "2", "0.5", "1e9", "-0.3", "nan", "inf", "", "abc", "300,100", "8", "1,0"]),
    st.text(alphabet=string.printable, max_size=8),
)
OPTIONS = [
    "--method",
    "--dataset",
    "--model",
    "--hidden",
    "--density",
    "--epsilon",
    "--distribution",
    "--epochs",
    "--batch-size",
    "--lr",
    "--optimizer",
    "--momentum",
    "--weight-decay",
    "--seed",
    "--backend",
    "--device",
    "--param",
    "--init",
    "--sparsify",
    "--dropout",
    "--target",
]
SAFE = ["--epochs", "1", "--hidden", "8", "--no-progress"]


def run(args: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(args)
    return code, err.getvalue()


def assert_clean(code: int, stderr: str) -> None:
    assert "Traceback" not in stderr
    assert code == 0 or (code == 2 or (code == 1 and "training diverged" in stderr)), (code, stderr)
    if code == 2:  # refused before any work: one line
        assert stderr.startswith("evosparse: error:") and stderr.count("\n") == 1, stderr
    if code == 1:  # a run that started and diverged: its error line may follow the warnings printed as it started
        *warnings, error = stderr.splitlines()
        assert error.startswith("evosparse: error:") and all(w.startswith("evosparse: warning:") for w in warnings)


fuzz = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@fuzz
@given(pairs=st.lists(st.tuples(st.sampled_from(OPTIONS), VALUES), max_size=4))
def test_random_options(tmp_path_factory, pairs):
    out = tmp_path_factory.mktemp("run")
    args = ["train", *SAFE, "--out", str(out / "o")]
    for option, value in pairs:
        args += [option, value]
    assert_clean(*run(args))


toml_lines = st.lists(
    st.tuples(
        st.sampled_from(["method", "density", "epochs", "lr", "hidden", "params", "zeta", "[params]", "x"]),
        st.sampled_from(['"set"', "0.2", "-1", "[8]", '"8"', "{}", "true", "1e400", "=", '"', "[1, 2"]),
    ),
    max_size=5,
)


@fuzz
@given(lines=toml_lines, noise=st.text(max_size=20))
def test_random_toml_files(tmp_path_factory, lines, noise):
    folder = tmp_path_factory.mktemp("toml")
    config = Path(folder) / "c.toml"
    config.write_text("\n".join(f"{k} = {v}" if not k.startswith("[") else k for k, v in lines) + "\n" + noise)
    assert_clean(*run(["train", *SAFE, "--config", str(config), "--out", str(folder / "o")]))


cells = st.one_of(
    st.integers(-5, 5).map(str),
    st.floats(-3, 3).map(str),
    st.sampled_from(["a", "b", "", " ", "x,y", '"q"', "1e5", "nan"]),
)


@fuzz
@given(rows=st.lists(st.lists(cells, min_size=1, max_size=4), max_size=12), header=st.booleans())
def test_random_csv_tables(tmp_path_factory, rows, header):
    folder = tmp_path_factory.mktemp("csv")
    table = Path(folder) / "t.csv"
    text = ("f1,f2,label\n" if header else "") + "\n".join(",".join(row) for row in rows)
    table.write_text(text)
    assert_clean(*run(["train", *SAFE, "--dataset", f"csv:{table}", "--out", str(folder / "o")]))
