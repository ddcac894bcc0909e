import subprocess
import sys

from tests.helpers import run_cli


def test_help_lists_the_commands_that_exist():
    r = run_cli("--help")
    assert r.returncode == 0
    for command in ("data", "train", "eval", "vst", "finetune", "streams"):
        assert command in r.stdout


def test_runtime_packages_import_without_torch():
    code = (
        "import sys, edge_runtime.cli, streams.source, streams.rtsp_server, vst.commands, lvlm.commands; "
        "edge_runtime.cli.build_parser(); "
        "heavy = [m for m in ('torch', 'transformers', 'peft') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
