"""``python -m toolbox runs ...`` (toolbox/cli/runs.py) and ``python -m toolbox export ...``
(toolbox/cli/export.py). Each command's module loads only when it is the one asked for."""

import sys

from toolbox.cli.main import run_cli

USAGE = """\
python -m toolbox runs ...     list, show, compare and trace runs (runs --help)
python -m toolbox export RUN   export a model: safetensors, ONNX, TorchScript (export --help)"""


def main(argv: list[str]) -> int:
    if argv[:1] == ["runs"]:
        from toolbox.cli.runs import main as runs_main

        return runs_main(argv)  # it reads its own name
    if argv[:1] == ["export"]:
        from toolbox.cli.export import export_main

        return export_main(argv[1:])
    print(USAGE)
    return 0 if argv[:1] in (["-h"], ["--help"]) else 2


sys.exit(run_cli(main))
