"""The package installs as one `trajtune` namespace, and the CLI answers without heavy imports."""

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

from conftest import ROOT


def test_help_does_not_import_torch_or_deepspeed():
    code = (
        "import sys, io, contextlib\n"
        "from trajtune.launcher.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
        "    rc = main([])\n"
        "for cmd in ['convert', 'render', 'build', 'train', 'export']:\n"
        "    try:\n"
        "        with contextlib.redirect_stdout(io.StringIO()):\n"
        "            main([cmd, '--help'])\n"
        "    except SystemExit:\n"
        "        pass\n"
        "heavy = sorted(m for m in ('torch', 'deepspeed', 'transformers', 'datasets') if m in sys.modules)\n"
        "print(rc, 'COMMAND' in out.getvalue(), heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split(None, 2) == ["2", "True", "[]\n"] or out.strip() == "2 True []"


def test_console_script_lists_subcommands():
    out = subprocess.run(["trajtune", "--help"], capture_output=True, text=True, check=True).stdout
    for cmd in ("convert", "render", "build", "train"):
        assert f"    {cmd}" in out


def test_built_wheel_imports_every_subpackage(tmp_path: Path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path / "dist"), str(ROOT)], check=True, capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("trajtune-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "trajtune/__init__.py" in names and "trajtune/launcher/cli.py" in names
    assert "trajtune/setup.py" not in names, "setup.py must not ship inside the package"
    assert "trajtune/slurm/preemptible.sbatch" in names  # the templates `trajtune slurm submit` renders
    assert "trajtune/ds_configs/zero3.json" in names and "trajtune/data_builders/render/prompt_formats/react.jinja" in names
    assert not any(n.startswith("trajtune/tests/") for n in names)
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True)
    code = ("import json, trajtune, trajtune.launcher.cli, trajtune.trainer, trajtune.eval, "
            "trajtune.data_builders.trajectory as t; print(json.dumps([trajtune.__file__, t.__file__]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path,
                         env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"}).stdout
    files = json.loads(out)
    assert all(f.startswith(str(target)) for f in files), files


def test_deepspeed_launcher_local_rank_before_the_subcommand_is_accepted(monkeypatch, capsys):
    # `deepspeed --module trajtune.launcher.cli train ...` runs each rank as `cli --local_rank=N train ...`.
    from trajtune.launcher.cli import main

    monkeypatch.setenv("LOCAL_RANK", "0")  # records the original state, so teardown restores it
    monkeypatch.delenv("LOCAL_RANK")
    assert main(["--local_rank=1", "train", "--keys"]) == 0
    assert "global_batch_size" in capsys.readouterr().out
    assert os.environ["LOCAL_RANK"] == "1"
