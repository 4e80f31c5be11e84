"""The command line: list, show, verify and compile on library names and a user's file; help for
every option, a light start (no torch for --help), the resource table of ``mixir compile``; and
the pictures: ``mixir tune --plot`` (``mixir.autotune.plot``) and the benchmarks' shared helper
(``benchmarks/plots.py``), on fake data (matplotlib is optional: its absence is a clear error)."""
import argparse
import os
import subprocess
import sys
import textwrap

import pytest

from mixir.autotune import plot as tplot
from mixir.cli import main, parser
from mixir.cli.table import resource_table, spill_warning
from mixir.errors import MixirError

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import plots as bplots  # benchmarks/plots.py

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def list_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MIXIR_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_list_names_everything_in_100_columns_and_is_cached(list_cache, capsys, monkeypatch):
    from mixir.cli import names, table
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= 100
    starts = {line.split()[0] for line in lines[2:] if line and not line.startswith(" ")}
    want = set(names.library_names())
    assert want <= starts
    assert {"gla", "mamba2", "hgrn", "lightnet", "retention", "lssl", "lmu", "attention:causal",
            "attention:sliding_window"} <= want
    assert "diagonal along K" in out and "wrapper over s4d_bilinear" in out
    # the second call reads the cached table: no classification at all
    monkeypatch.setattr(table, "list_rows", lambda: pytest.fail("list recomputed a cached table"))
    assert main(["list"]) == 0
    assert capsys.readouterr().out == out
    assert len(list(list_cache.glob("cli/list-*.txt"))) == 1


def test_every_listed_name_resolves_and_classifies():
    from mixir.cli.names import library_names, resolve
    from mixir.lowering.family import classify
    for name in library_names():
        target = resolve(name)
        classify(target.declaration)                  # raises for a name no family lowers
        assert target.is_mask == name.startswith("attention:"), name
    assert resolve("lmu").declaration.name == "s4d" and "lmu wrapper" in resolve("lmu").note
    assert resolve("attention:sliding_window:8").name == "attention:sliding_window(8)"


def test_show_prints_ir_classification_and_sources(capsys):
    assert main(["show", "gla"]) == 0
    out = capsys.readouterr().out
    assert "exp(gk)" in out and "gk       = gk" in out
    assert "chunked" in out and "triton source:" in out and ".py" in out


def test_show_accepts_attention_masks_and_wrappers(capsys):
    assert main(["show", "attention:sliding_window:8"]) == 0
    out = capsys.readouterr().out
    assert "sliding_window" in out and "(q - kv) < 8" in out and "kernels.py" in out
    assert main(["show", "lssl"]) == 0
    out = capsys.readouterr().out
    assert "mixer s4d_bilinear" in out and "lssl wrapper" in out


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


def test_module_function_resolves_from_the_current_directory(user_file, monkeypatch, capsys):
    monkeypatch.chdir(user_file.parent)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", os.getcwd())])
    monkeypatch.delitem(sys.modules, "my_mixers", raising=False)
    assert main(["show", "my_mixers:decayed"]) == 0
    assert "mixer decayed" in capsys.readouterr().out
    assert os.getcwd() not in sys.path                  # the path is left as it was
    assert main(["show", "no_such_module_here:decayed"]) == 2
    assert "cannot import module 'no_such_module_here'" in capsys.readouterr().err


@pytest.mark.interp
def test_verify_user_mixer_from_file_prints_shapes_and_progress(user_file, capsys):
    assert main(["verify", f"{user_file}:decayed", "--dtype", "float32", "--T", "20"]) == 0
    cap = capsys.readouterr()
    assert "recurrent" in cap.out and "chunked" in cap.out and "all checks passed" in cap.out
    assert "shapes: q[2, 20, 2, 16]" in cap.out and "S0[2, 2, 16, 16]" in cap.out
    assert "[1/1] float32: ok" in cap.err


@pytest.mark.interp
def test_verify_attention_mask(capsys):
    assert main(["verify", "attention:sliding_window:8", "--dtype", "float32", "--T", "20"]) == 0
    cap = capsys.readouterr()
    assert "shapes: q[2, 20, 2, 16]" in cap.out and "all checks passed" in cap.out
    for q in ("fwd o", "fwd lse", "bwd dq", "bwd dk", "bwd dv"):
        assert q in cap.out
    assert "[1/1] float32: ok" in cap.err


@pytest.mark.aot
@pytest.mark.interp
def test_compile_reports_resources(user_file, capsys):
    # in this process (the worker pool has its own tests: test_aot_workers.py)
    assert main(["compile", f"{user_file}:decayed", "--arch", "sm_90", "--dtype", "float32",
                 "--workers", "0"]) == 0
    out = capsys.readouterr().out
    assert "sm_90" in out and "regs" in out and "recurrent_gla_fwd" in out
    rows = [line for line in out.splitlines()[2:]]
    assert len(rows) == len(set(rows)), "two rows read the same"


def test_bad_names_give_clear_errors(user_file, capsys):
    assert main(["show", "no_such_mixer"]) == 2
    err = capsys.readouterr().err
    assert "no library mixer 'no_such_mixer'" in err and "attention:causal" in err and "lssl" in err
    assert main(["show", f"{user_file}:not_a_mixer"]) == 2
    assert "is not a mixer" in capsys.readouterr().err
    assert main(["show", "attention:no_such_mask"]) == 2
    assert "no library attention mask 'no_such_mask'" in capsys.readouterr().err
    assert main(["verify", "gla", "--dtype", "float64"]) == 2
    assert "dtype must be one of" in capsys.readouterr().err


# ---- options, help, start-up -----------------------------------------------------------------


def _subparsers(p):
    (action,) = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
    return action.choices


def test_every_subcommand_option_has_help():
    subs = _subparsers(parser())
    assert set(subs) == {"list", "show", "verify", "compile", "demo", "tune"}
    missing = [f"{name} {a.dest}" for name, sp in subs.items() for a in sp._actions
               if not isinstance(a, argparse._HelpAction) and not (a.help or "").strip()]
    assert missing == []


def test_version_and_help(capsys):
    from mixir import __version__
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"mixir {__version__}"
    with pytest.raises(SystemExit):
        main(["verify", "--help"])
    out = capsys.readouterr().out
    assert "--dtype" in out and "float64 reference" in out and "module:function" in out


def test_python_dash_m_mixir_starts_without_torch():
    code = ("import sys, runpy; sys.argv = ['mixir', '--help']\n"
            "try:\n    runpy.run_module('mixir', run_name='__main__')\n"
            "except SystemExit as e:\n    assert e.code == 0, e.code\n"
            "assert 'torch' not in sys.modules, 'mixir --help imported torch'\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       check=False)
    assert r.returncode == 0, r.stderr
    assert "verify" in r.stdout and "tune" in r.stdout
    r = subprocess.run([sys.executable, "-m", "mixir", "--version"], capture_output=True, text=True,
                       timeout=120, check=False)
    assert r.returncode == 0 and r.stdout.startswith("mixir ")


def _res(kernel, regs=32, spills=0, **cx):
    from mixir.lowering.common.ptxas import KernelResources
    return KernelResources(kernel=kernel, arch="sm_90", num_warps=4, num_stages=2, registers=regs,
                           spills=spills, shared_bytes=1024, local_bytes=0,
                           constexprs=tuple(sorted(cx.items())))


def test_resource_table_tells_rows_apart_and_merges_identical_ones():
    rs = [_res("k.out", REVERSE=False, BK=16), _res("k.out", REVERSE=True, BK=16),
          _res("k.out", REVERSE=True, BK=16), _res("k.cum", BK=16), _res("k.cum", BK=16),
          ValueError("ptxas failed\nlong log")]
    text = resource_table(rs)
    body = text.splitlines()[2:]
    assert len(body) == len(set(body)) == 4
    assert any("REVERSE=False" in line for line in body)
    assert any("REVERSE=True (x2)" in line for line in body)
    assert any(line.startswith("k.cum") and line.rstrip().endswith("(x2)") for line in body)
    assert "error: ptxas failed" in body
    assert "BK=" not in text                       # the same in every row of its kernel


def test_spill_warning_names_the_kernels():
    assert spill_warning([_res("a")]) is None
    w = spill_warning([_res("a"), _res("big_kernel", spills=48), ValueError("x")])
    assert "1 kernel build(s)" in w and "big_kernel (sm_90, 48 B/thread)" in w


# ---- pictures ---------------------------------------------------------------------------------
def _png(path):
    with open(path, "rb") as f:
        return f.read(8) == PNG and os.path.getsize(path) > 5000


def test_missing_matplotlib_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)       # import matplotlib -> ImportError
    with pytest.raises(MixirError, match=r"mixir tune --plot needs matplotlib.*mixir\[plot\]"):
        tplot.require_matplotlib("mixir tune --plot")
    with pytest.raises(SystemExit, match="needs matplotlib"):
        bplots.resolve(str(tmp_path / "x.png"), "bench_x", "cpu")
    assert bplots.resolve("none", "bench_x", "cpu") is None
    monkeypatch.setenv("OUT", str(tmp_path))
    assert bplots.resolve("auto", "bench_x", "cuda:0") == os.path.join(str(tmp_path), "bench_x_cuda.png")


def test_tuning_plot_from_fake_runs(tmp_path):
    pytest.importorskip("matplotlib", reason="matplotlib is optional (pip install 'mixir[plot]')")
    space = [1e-4 * (1 + i / 10) for i in range(40)]
    timed = tplot.Panel("gla chunked", space, [
        {"predicted_s": 1e-4, "measured_s": 2.1e-4, "status": "best"},
        {"predicted_s": 1.1e-4, "measured_s": 2.5e-4, "status": "ok"},
        {"predicted_s": 1.2e-4, "measured_s": None, "status": "dropped"}])
    untimed = tplot.Panel("gla recurrent", space[:5], [{"predicted_s": 1e-4, "measured_s": None,
                                                        "status": "best"}])
    out = tplot.save_tuning_plot([timed, untimed], str(tmp_path / "t.png"), title="fake")
    assert _png(out)
    with pytest.raises(MixirError, match="nothing to plot"):
        tplot.save_tuning_plot([], str(tmp_path / "e.png"))


def test_benchmark_plot_from_fake_rows(tmp_path, capsys):
    pytest.importorskip("matplotlib", reason="matplotlib is optional (pip install 'mixir[plot]')")
    rows = [{"impl": impl, "T": T, "ms": T * k, "mb": None if impl == "b" else T / 8}
            for impl, k in (("a", 1.0), ("b", 0.5)) for T in (64, 128, 256)]
    panels = bplots.from_rows(rows, x="T", label=lambda r: r["impl"],
                              metrics=[("ms", "time", "ms"), ("mb", "memory", "MB")])
    assert set(panels[0].series) == {"a", "b"} and set(panels[1].series) == {"a"}   # None left out
    path = str(tmp_path / "sub" / "bench.png")
    assert bplots.save(path, panels, title="fake") == path and _png(path)
    assert bplots.save(str(tmp_path / "none.png"), [bplots.Panel("t", "ms")]) is None
    assert "no plot: nothing measured" in capsys.readouterr().out
    assert not os.path.exists(tmp_path / "none.png")


def test_mixir_tune_plot_writes_the_searched_space(tmp_path, capsys):
    pytest.importorskip("matplotlib", reason="matplotlib is optional (pip install 'mixir[plot]')")
    pytest.importorskip("ortools", reason="mixir tune solves with ortools (the tune extra)")
    png = tmp_path / "tune.png"
    assert main(["tune", "gla", "--no-aot", "--dry-run", "--strategy", "recurrent",
                 "--shapes", "B=1,T=256,H=2,K=64,V=64", "--plot", str(png)]) == 0
    assert f"plot: {png}" in capsys.readouterr().out and _png(png)
