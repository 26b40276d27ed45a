"""Writes quickstart.ipynb (kept as code so that diffs of the notebook stay readable)."""

from pathlib import Path

import nbformat

cells = [
    nbformat.v4.new_markdown_cell(
        "# ado-ray quickstart\n\n"
        "Run a command over a few repositories from a notebook, then look at the run with pandas. "
        "This makes three throw-away repositories in a temporary directory; point `Batch` at your "
        "own repository list (a file path, or a list of lines) for real work. While it runs, the "
        "Ray dashboard shows one `ado:<repo>` task per repository."
    ),
    nbformat.v4.new_code_cell(
        "import subprocess, tempfile\n"
        "from pathlib import Path\n"
        "from ado_ray import Batch, load_runs, load_tasks\n\n"
        "root = Path(tempfile.mkdtemp(prefix='ado-notebook-'))\n"
        "for name in ['alpha', 'beta', 'gamma']:\n"
        "    repo = root / name\n"
        "    repo.mkdir()\n"
        "    (repo / 'main.py').write_text(f'print({name!r})\\n')\n"
        "    for args in (['init', '-q', '-b', 'main'], ['add', '-A'],\n"
        "                 ['-c', 'user.name=nb', '-c', 'user.email=nb@example.com', 'commit', '-qm', 'init']):\n"
        "        subprocess.run(['git', *args], cwd=repo, check=True)\n"
        "sorted(p.name for p in root.iterdir())"
    ),
    nbformat.v4.new_code_cell(
        "import sys\n"
        "# The command runs inside each repository's checkout: give scripts by absolute path.\n"
        "agent = Path('../examples/add_spdx_header.py').resolve()\n"
        "batch = Batch(\n"
        "    [f'{root / name} license=MIT' for name in ['alpha', 'beta', 'gamma']],\n"
        "    cmd=f'{sys.executable} {agent} {{license}}',\n"
        "    parallel=2,\n"
        "    name='notebook-demo',\n"
        "    state=str(root / 'state.db'),\n"
        "    work_root=str(root / 'work'),\n"
        ")\n"
        "[repo.name for repo in batch.plan()]"
    ),
    nbformat.v4.new_code_cell("result = batch.run()\nresult.counts"),
    nbformat.v4.new_code_cell(
        "tasks = load_tasks(result.run.run_id, state=str(root / 'state.db'))\n"
        "tasks[['name', 'state', 'commit', 'where']]"
    ),
    nbformat.v4.new_code_cell("load_runs(state=str(root / 'state.db'))[['run_id', 'name', 'status', 'changed']]"),
]
notebook = nbformat.v4.new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
nbformat.write(notebook, Path(__file__).with_name("quickstart.ipynb"))
