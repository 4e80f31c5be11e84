"""The command line: list, show, verify and compile, on a library mixer and a user's file."""
import textwrap

import pytest

from mixir.cli import main


def test_list_shows_library_with_classes(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("gla", "mamba2", "hgrn", "lightnet", "retention"):
        assert name in out
    assert "diagonal along K" in out


def test_show_prints_ir_classification_and_sources(capsys):
    assert main(["show", "gla"]) == 0
    out = capsys.readouterr().out
    assert "exp(gk)" in out and "gk       = gk" in out
    assert "chunked" in out and "triton source:" in out and ".py" in out


@pytest.fixture
def user_file(tmp_path):
    p = tmp_path / "my_mixers.py"
    p.write_text(textwrap.dedent('''
        import mixir as mx
        from mixir import In, State

        @mx.mixer
        def decayed(q: In["K"], k: In["K"], v: In["V"], f: In[()], S: State["K", "V"]):
            S = mx.sigmoid(f) * S + mx.outer(k, v)
            return q @ S, S

        not_a_mixer = 3
    '''))
    return p


@pytest.mark.interp
def test_verify_user_mixer_from_file(user_file, capsys):
    assert main(["verify", f"{user_file}:decayed", "--dtype", "float32", "--T", "20"]) == 0
    out = capsys.readouterr().out
    assert "recurrent" in out and "chunked" in out and "all checks passed" in out


@pytest.mark.aot
@pytest.mark.interp
def test_compile_reports_resources(user_file, capsys):
    assert main(["compile", f"{user_file}:decayed", "--arch", "sm_90", "--dtype", "float32"]) == 0
    out = capsys.readouterr().out
    assert "sm_90" in out and "regs" in out and "recurrent_gla_fwd" in out


def test_bad_names_give_clear_errors(user_file, capsys):
    assert main(["show", "no_such_mixer"]) == 2
    assert "no library mixer 'no_such_mixer'" in capsys.readouterr().err
    assert main(["show", f"{user_file}:not_a_mixer"]) == 2
    assert "is not a mixer" in capsys.readouterr().err
