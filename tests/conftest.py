import os
import sys

# The suite runs from the repository root; make `import envs` work however pytest is invoked.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Tests share 2 cores with each other; one torch thread per process keeps them from fighting.
os.environ.setdefault("OMP_NUM_THREADS", "1")


import pytest  # noqa: E402


@pytest.fixture
def one_line_error(capsys):
    """`one_line_error(parse, argv)` runs a script's `parse_command_line(argv)`, asserts the project's bad-input
    contract (exit code 2, one line on stderr starting "error: ", no traceback) and returns that line."""

    def check(parse, argv):
        with pytest.raises(SystemExit) as e:
            parse(argv)
        err = capsys.readouterr().err.strip()
        assert e.value.code == 2 and "\n" not in err and err.startswith("error: ") and "Traceback" not in err, err
        return err

    return check
